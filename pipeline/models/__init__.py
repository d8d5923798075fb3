"""The models: backbone registry (AWD-LSTM, transformers), classifier heads, vocabulary transfer, published checkpoints (zoo), the ONNX scorers."""
