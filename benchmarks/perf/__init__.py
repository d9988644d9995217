"""Speed and memory of the library: layer, model forward, train step, evaluation, accelerator script."""
