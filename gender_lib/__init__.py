"""gender_lib: face gender classification from VGG-Face / dlib descriptors."""

__version__ = "0.4.0"
