# Project IPython profile (IPYTHONDIR=.ipython, set by the Makefile and gender_lib.pipeline).
# TensorFlow's C++ runtime writes log lines straight to file descriptor 2; with fd capture on,
# they land in cell outputs under papermill but not always under nbval, which then reports a
# spurious difference. Leaving fd output uncaptured keeps them in the terminal only.
c.IPKernelApp.capture_fd_output = False  # noqa: F821 - `c` is injected by IPython
