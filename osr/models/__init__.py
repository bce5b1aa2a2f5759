from osr.models.autoencoder import Autoencoder, Decoder, Encoder
from osr.models.convnet import ConvNet

__all__ = ["Autoencoder", "ConvNet", "Decoder", "Encoder"]
