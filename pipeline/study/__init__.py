"""The LSTM-vs-transformer comparison: its grid and its report."""
