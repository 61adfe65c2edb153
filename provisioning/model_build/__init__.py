"""The steps of the model-bundle build that provisioning/build_models.py runs, one module each.
Runs in the build venv: may import only the standard library and the pinned build packages."""
