"""The network converters, each verified against its source before anything is saved.

* :mod:`~gender_lib.converters.matconvnet` reads ``vgg_face.mat`` (both MatConvNet layouts) into a
  plain layer list; :mod:`~gender_lib.converters.vggface` writes it as an ONNX graph and checks it
  against a float64 NumPy forward pass.
* :mod:`~gender_lib.converters.dlib_dnn` reads dlib's DNN file in pure Python;
  :mod:`~gender_lib.converters.dlib_resnet` writes it as an ONNX graph and checks it against dlib's
  own descriptors on real faces.
* :mod:`~gender_lib.converters.onnx_graph` writes both graphs and runs them (ONNX Runtime);
  :mod:`~gender_lib.converters.verified` saves, checks and loads every conversion the same way.
"""
