"""torch.utils look-alike: `from dutycycle.utils.data import DataLoader` ports `from torch.utils.data ...`."""
