"""Image transforms, as SWAD defines them.

Training images get RandomResizedCrop (scale 0.7-1), a horizontal flip, ColorJitter 0.3 and
RandomGrayscale 0.1; every evaluation and validation split is only resized. Both end with the
normalisation the backbone's pretrained weights expect (`domainbed.networks.input_normalization`:
ImageNet's mean and std unless the backbone declares others, as CLIP's do).
"""

from torchvision import transforms as T

from domainbed.hparams.declare import common_hparams
from domainbed.hparams.rules import int_at_least
from domainbed.networks.registry import IMAGENET_MEAN, IMAGENET_STD


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return T.Compose([
        T.Resize((image_size, image_size)),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.7, 1.0)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.3, 0.3, 0.3, 0.3),
        T.RandomGrayscale(p=0.1),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform_without_crop(image_size: int):
    """Spawrious' training augmentation in DomainBed: the whole image resized, no random crop,
    then the same flip, colour jitter and grayscale as `train_transform`."""
    return T.Compose([
        T.Resize((image_size, image_size)),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.3, 0.3, 0.3, 0.3),
        T.RandomGrayscale(p=0.1),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


@common_hparams
def _transform_hparams(hparam, dataset):
    hparam("data_augmentation", True,
           help="random crops, flips, colour jitter and grayscale on the training domains (DomainBed's)")
    hparam("image_size", 224, valid=int_at_least(1), help="side of the square crops fed to the backbone, pixels")
