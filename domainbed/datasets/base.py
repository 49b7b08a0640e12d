"""What every dataset offers the trainer, as DomainBed's MultipleDomainDataset."""


class MultipleDomainDataset:
    """A list of environments (one torch Dataset per domain) plus the facts the trainer needs.

    Environment datasets yield `(raw input, label)`. For image folders the raw input is a PIL
    image and `train_transform` / `eval_transform` turn it into a tensor; for in-memory datasets
    it is already a tensor and both transforms are None.
    """

    N_STEPS = 5000
    CHECKPOINT_FREQ = 100
    N_WORKERS = 4
    GENERATED = False  # made in memory: nothing to read from --data_dir, nothing to download
    ENVIRONMENTS = None
    input_shape = None
    num_classes = None
    train_transform = None
    eval_transform = None

    @classmethod
    def title(cls, registered_name: str, data_dir) -> str:
        """How the run's output directory and collect_results name the dataset."""
        return registered_name

    def __init__(self):
        self.datasets = []
        self.environments = list(self.ENVIRONMENTS or [])

    def __getitem__(self, index):
        return self.datasets[index]

    def __len__(self):
        return len(self.datasets)
