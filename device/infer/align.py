"""Face alignment: a similarity warp of five landmarks onto the standard 112×112 template."""

from __future__ import annotations

import cv2
import numpy as np

#: The ArcFace/InsightFace five-point layout for 112×112 crops (eyes, nose tip, mouth corners),
#: the geometry SFace was trained on.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2×3 matrix of the least-squares similarity (rotation, uniform scale, shift) src→dst.

    Umeyama's closed form: exact and deterministic, unlike RANSAC estimators, and five points
    are too few for outlier rejection to help.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_src = (src_c ** 2).sum() / len(src)
    scale = (s * d).sum() / var_src if var_src > 0 else 1.0
    shift = dst_mean - scale * rot @ src_mean
    return np.hstack([scale * rot, shift[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The face warped to ``size``×``size`` with its landmarks on the template (BGR in, BGR out)."""
    matrix = similarity_transform(landmarks, TEMPLATE_112 * (size / 112.0))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
