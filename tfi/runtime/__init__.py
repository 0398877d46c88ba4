"""Process state, kept out of the pure core: signal handling (stop requests held during store
writes), the log stream (root logger, masking of secrets) and the URIs and paths of stores."""
