"""What nanoGPT's train.py uses that dutycycle does not have yet, as the no-ops they are in a
float32 CPU run: the loss scaler (`torch.cuda.amp.GradScaler(enabled=False)` only passes calls
through). train.py imports it from here instead of torch.cuda.amp."""


class GradScaler:
    """torch.cuda.amp.GradScaler with enabled=False: scale() returns the loss, step() steps."""

    def __init__(self, enabled=True):
        if enabled:
            raise NotImplementedError("GradScaler(enabled=True): float16 training arrives with the CUDA backend")

    def scale(self, loss):
        return loss

    def unscale_(self, optimizer):
        pass

    def step(self, optimizer):
        optimizer.step()

    def update(self):
        pass
