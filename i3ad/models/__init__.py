"""Networks of the method: the inpainting generator, its SN-PatchGAN discriminator, AE and GAN baselines."""

from i3ad.models.autoencoder import AutoencoderConfig, ConvAutoencoder
from i3ad.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from i3ad.models.gan import GanConfig, GanNetwork, LatentEncoder, LatentGenerator, feature_distance_map
from i3ad.models.generator import GeneratorConfig, InpaintGenerator
from i3ad.models.layers import GatedConv2d, GatedDeconv2d, SelfAttention, gated_stack, num_parameters

__all__ = [
    "AutoencoderConfig",
    "ConvAutoencoder",
    "DiscriminatorConfig",
    "GanConfig",
    "GanNetwork",
    "GatedConv2d",
    "GatedDeconv2d",
    "GeneratorConfig",
    "InpaintGenerator",
    "LatentEncoder",
    "LatentGenerator",
    "PatchDiscriminator",
    "SelfAttention",
    "feature_distance_map",
    "gated_stack",
    "num_parameters",
]
