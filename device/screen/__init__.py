"""The applicant screen at the door: a small web page the gate serves (``server``) and its static
files (``static/``). Imports infer (for the challenge prompts) and gerbang only.
"""
