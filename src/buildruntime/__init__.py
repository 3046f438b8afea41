"""buildruntime: run CI builds on Kubernetes from an informer cache."""
