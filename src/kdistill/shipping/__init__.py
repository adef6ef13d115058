"""Shipping a trained student: predict, ONNX export, the model card, publishing to the Hub."""
