"""Deployment: exported artifacts (ONNX, torch.export) with their model card, parity check and ONNX Runtime predictor.

The modules that use torch (``graph``, ``onnx_export``, ``torch_export``, ``parity``,
``artifact``) and the ones a deployment runs without torch model code (``card``,
``onnx_predictor``) are kept apart; nothing is imported here so that importing the
predictor never pulls in torch.
"""
