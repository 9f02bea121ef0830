"""Look inside and ship a trained model: batched prediction, attention overlays, the
neural-collapse report, and ONNX / TorchScript export.

Each module works on a trained model as ``mlcnc.engine.load_trained`` gives it (an object
with ``model`` in eval mode, ``config``, ``class_names``, ``class_freq``, ``transform`` and
``image_size``); the ``mlcnc predict | inspect | export`` commands are thin wrappers.
"""
