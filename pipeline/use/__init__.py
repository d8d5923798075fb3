"""After a run: predict, export, the forward + backward ensemble, and the notebooks' inspection API."""
