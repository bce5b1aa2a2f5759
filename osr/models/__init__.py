from osr.models.autoencoder import Autoencoder, Decoder, Encoder
from osr.models.classifier32 import Classifier32
from osr.models.convnet import ConvNet
from osr.models.fastnet import FastNet
from osr.models.resnet import CIFARResNet18

__all__ = [
    "Autoencoder",
    "CIFARResNet18",
    "Classifier32",
    "ConvNet",
    "Decoder",
    "Encoder",
    "FastNet",
]
