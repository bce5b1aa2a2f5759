from osr.modules.autoencoder_classifier import AutoencoderClassifier
from osr.modules.classifier import Classifier
from osr.modules.open_set import OpenSetModule

__all__ = ["AutoencoderClassifier", "Classifier", "OpenSetModule"]
