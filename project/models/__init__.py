from project.models.microsegformer import MicroSegFormer
from project.models.unet import UNet

__all__ = ["MicroSegFormer", "UNet"]
