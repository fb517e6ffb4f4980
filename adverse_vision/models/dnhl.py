"""Networks of DN-HL ("When Image Denoising Meets High-Level Vision Tasks", Liu et al.,
IJCAI 2018), NHWC flax.linen.

DN-HL trains a denoiser with an MSE loss, then fine-tunes it through a frozen
high-level network (a classifier or a segmenter) with ``L_high + w * L_rec``. This
module holds the three networks; every one takes float RGB images in [0, 1], NHWC:

* :class:`Denoiser`: the three-scale residual denoiser of the paper (about 1.03 M
  parameters), returning the denoised image (input + predicted residual).
* :class:`VGG16Classifier`: VGG-16 (13 convs, fc6 / fc7 / fc8) returning logits.
* :class:`DeepLabLargeFOV`: DeepLab-v1 LargeFOV segmenter returning logits at
  output stride 8; :func:`upsample_logits` resizes them to the label size.

::

    den = Denoiser()                                     # form="default", width=1.0
    v = den.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    clean = den.apply(v, noisy, train=False)             # same shape as ``noisy``
    out, upd = den.apply(v, noisy, train=True, mutable=["batch_stats"])

Denoiser layout (``c`` = channels at ``width=1``, every count except the 3 output
channels scaled by ``width``; parameter names follow the official Caffe prototxt)::

    conv0            5x5, c=64, biased, no BN / ReLU                       full res
    conv1 + conv1_bn 3x3 stride 2, c=128, biased, BN, ReLU                 /2
    residual_1       bottleneck 1x1 32 -> 3x3 32 -> 1x1 128 (no biases,
                     BN after each, ReLU after the first two), + input, ReLU = E1
    conv2 + conv2_bn 3x3 stride 2, c=128, biased, BN, ReLU                 /4
    residual_2       bottleneck 32-32-128                                  = E2
    upsample_r2      4x4 stride-2 transposed conv, c=32, biased            /2
                     concat [E1, upsample_r2] (160 channels)
    conv3 + conv3_bn 3x3, c=256, biased, BN, ReLU
    residual_3       bottleneck 64-64-256                                  = E3
    upsample_r3      4x4 stride-2 transposed conv, c=64, biased            full res
                     concat [conv0, upsample_r3] (128 channels)
    concat_reduction 3x3, 3 channels, biased = residual; output = input + residual

"BN" is BatchNorm with a learnt scale and bias (Caffe's BatchNorm + Scale pair),
running-average decay 0.9 and epsilon 1e-5. As in the official network, the two
transposed convolutions are followed by neither BatchNorm nor ReLU, and the convs
before a BatchNorm keep their bias. A Caffe deconvolution weight ``(in, out, kh, kw)``
is the flax ``kernel`` transposed to ``(kh, kw, out, in)`` (``transpose_kernel=True``);
a Caffe convolution weight ``(out, in, kh, kw)`` becomes ``(kh, kw, in, out)``.

Two forms (attribute ``form``):

* ``"default"``: every conv is padded (5x5 by 2, 3x3 by 1, the transposed convs
  exactly double the size), so the output has the input's height and width, and the
  network works on [0, 1] RGB directly. H and W must be multiples of 4.
* ``"official"``: as the released Caffe model: ``conv0`` and ``concat_reduction`` are
  unpadded; the network converts its [0, 1] RGB input to mean-subtracted BGR in
  0-255 (:func:`rgb_to_caffe`) and adds the residual to the input cropped by 3 px on
  each side, so the output is ``(H - 6, W - 6)``, back in [0, 1] RGB. H - 4 and
  W - 4 must be positive multiples of 4. :func:`denoiser_crop` (or
  ``Denoiser.crop``) gives the crop, 3, so that targets can be cropped to match.

Initialisation is PyTorch's default (uniform, bound ``1 / sqrt(fan_in)``) except for
``concat_reduction``, whose kernel and bias start at zero: an untrained denoiser is
exactly the identity (the cropped identity in the official form), and training
starts from the noisy input rather than from a random image.

The classifier and the segmenter subtract the ImageNet mean and divide by its
standard deviation inside (``normalize=True``); their parameters are named as in
VGG-16 (``conv1_1`` .. ``conv5_3``, ``fc6``, ``fc7``, ``fc8``) and initialised as
torchvision's VGG (convs Kaiming-normal over fan-out, fully connected layers
normal with standard deviation 0.01, zero biases). Outputs are float32 whatever
the compute ``dtype``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adverse_vision.models.batch_norm import BatchNorm
from adverse_vision.models.layers import (
    Conv,
    NarrowConv,
    TorchConvTranspose,
    param_count,
    remat,
    torch_bias_init,
    torch_kernel_init,
)
from adverse_vision.ops import max_pool as pooling

Dtype = Any

#: Denoiser forms.
FORMS = ("default", "official")
#: Pixels the official form crops from each side of H and W.
OFFICIAL_CROP = 3
#: Per-channel means (B, G, R order, 0-255) of the Caffe VGG / DeepLab models.
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)
#: ImageNet statistics of [0, 1] RGB images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: VGG-16 conv blocks: channels at width 1 and number of 3x3 convs per block.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
#: VGG-16 classifier heads.
HEADS = ("flatten", "avg")

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision's VGG initialisers.
_vgg_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_vgg_dense_init = nn.initializers.normal(0.01)


def _check_form(form: str) -> str:
    if form not in FORMS:
        raise ValueError(f"form: unknown denoiser form {form!r}; choose one of {FORMS}")
    return form


def denoiser_crop(form: str = "default") -> int:
    """Pixels a :class:`Denoiser` of this form removes from each side of H and W
    (3 for ``"official"``, 0 for ``"default"``)."""
    return OFFICIAL_CROP if _check_form(form) == "official" else 0


def _scaled(channels: int, width: float, name: str = "width") -> int:
    if isinstance(width, bool) or not isinstance(width, numbers.Real) \
            or not math.isfinite(width) or width <= 0:
        raise ValueError(f"{name}: expected a positive multiplier, got {width!r}")
    return max(1, int(channels * width))


def _check_images(x: jax.Array, who: str) -> None:
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{who} input: expected RGB images (B, H, W, 3), got shape {tuple(x.shape)}")


def _check_classes(num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")


def _check_rate(rate: Any) -> None:
    if isinstance(rate, bool) or not (isinstance(rate, numbers.Real) and 0.0 <= rate < 1.0):
        raise ValueError(f"dropout_rate: expected a value in [0, 1), got {rate!r}")


def rgb_to_caffe(x: jax.Array) -> jax.Array:
    """[0, 1] RGB (channels last) -> mean-subtracted BGR in 0-255 (:data:`CAFFE_BGR_MEAN`)."""
    mean = jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)
    return x[..., ::-1] * 255.0 - mean


def caffe_to_rgb(y: jax.Array) -> jax.Array:
    """Inverse of :func:`rgb_to_caffe`: mean-subtracted BGR 0-255 -> [0, 1] RGB."""
    mean = jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)
    return ((y + mean) / 255.0)[..., ::-1]


def _normalize_imagenet(x: jax.Array) -> jax.Array:
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (x.astype(jnp.float32) - mean) / std


class ResidualBottleneck(nn.Module):
    """``x + BN(1x1(ReLU(BN(3x3(ReLU(BN(1x1(x))))))))`` followed by ReLU.

    The convs (``branch2a`` 1x1 to ``hidden``, ``branch2b`` 3x3 to ``hidden``,
    ``branch2c`` 1x1 back to the input channels) have no bias; each is followed by a
    BatchNorm ``bn_branch2{a,b,c}``.
    """

    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = x
        sizes = (("a", self.hidden, 1), ("b", self.hidden, 3), ("c", x.shape[-1], 1))
        for tag, features, k in sizes:
            p = k // 2
            y = Conv(features, (k, k), padding=((p, p), (p, p)), use_bias=False,
                        kernel_init=torch_kernel_init, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"branch2{tag}")(y)
            y = BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                          epsilon=BN_EPSILON, use_fast_variance=False, dtype=self.dtype,
                          param_dtype=self.param_dtype, name=f"bn_branch2{tag}")(y)
            if tag != "c":
                y = nn.relu(y)
        return nn.relu(x + y)


class Denoiser(nn.Module):
    """The DN-HL denoiser (see the module docstring for the layout).

    Attributes:
      form: ``"default"`` (padded, [0, 1] RGB, output size = input size; H and W
        multiples of 4) or ``"official"`` (Caffe layout: unpadded first and last
        convs, BGR 0-255 inside, output cropped by 3 px per side; H - 4 and W - 4
        positive multiples of 4).
      width: multiplier of every channel count except the 3 output channels
        (``int(c * width)``, at least 1).
      dtype: computation dtype; the last conv and the output are float32.
      param_dtype: parameter dtype.
      remat: recompute the residual blocks' activations in the backward pass.

    ``__call__(x, train)`` maps (B, H, W, 3) float images in [0, 1] to the denoised
    float32 images (B, H - 2 * crop, W - 2 * crop, 3). ``train=True`` uses batch
    statistics and needs ``mutable=["batch_stats"]``.
    """

    form: str = "default"
    width: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    @property
    def crop(self) -> int:
        """Pixels removed from each side of H and W (see :func:`denoiser_crop`)."""
        return denoiser_crop(self.form)

    def check_input(self, x: jax.Array) -> None:
        """Raises ValueError unless ``x`` is (B, H, W, 3) with a size this form accepts."""
        _check_images(x, "Denoiser")
        official = _check_form(self.form) == "official"
        h, w = x.shape[1], x.shape[2]
        if official:
            if h - 4 < 4 or w - 4 < 4 or (h - 4) % 4 or (w - 4) % 4:
                raise ValueError(f"Denoiser input (form='official'): H - 4 and W - 4 must be "
                                 f"positive multiples of 4, got shape {tuple(x.shape)}")
        elif h < 4 or w < 4 or h % 4 or w % 4:
            raise ValueError(f"Denoiser input (form='default'): H and W must be positive "
                             f"multiples of 4, got shape {tuple(x.shape)}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        official = self.form == "official"

        def ch(c: int) -> int:
            return _scaled(c, self.width)

        def conv(x, features, k, name, strides=1, pad=None, **kw):
            p = k // 2 if pad is None else pad
            kw.setdefault("kernel_init", torch_kernel_init)
            kw.setdefault("bias_init", torch_bias_init(k * k * x.shape[-1]))
            kw.setdefault("dtype", self.dtype)
            return Conv(features, (k, k), strides=(strides, strides), padding=((p, p), (p, p)),
                           param_dtype=self.param_dtype, name=name, **kw)(x)

        def bn(name):
            return BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPSILON, use_fast_variance=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, name=name)

        def up(features, name):
            # A Caffe/PyTorch 4x4 stride-2 pad-1 deconvolution: exactly doubles H and W.
            return TorchConvTranspose(features, 4, stride=2, padding=1, dtype=self.dtype,
                                      param_dtype=self.param_dtype, name=name)

        residual = remat(ResidualBottleneck, self.remat)
        x = x.astype(jnp.float32)
        inp = rgb_to_caffe(x) if official else x
        h = inp.astype(self.dtype)
        f0 = h = conv(h, ch(64), 5, "conv0", pad=0 if official else 2)
        h = nn.relu(bn("conv1_bn")(conv(h, ch(128), 3, "conv1", strides=2)))
        e1 = h = residual(ch(32), self.dtype, self.param_dtype, name="residual_1")(h, train)
        h = nn.relu(bn("conv2_bn")(conv(h, ch(128), 3, "conv2", strides=2)))
        h = residual(ch(32), self.dtype, self.param_dtype, name="residual_2")(h, train)
        h = up(ch(32), "upsample_r2")(h)
        h = jnp.concatenate([e1, h], axis=-1)
        h = nn.relu(bn("conv3_bn")(conv(h, ch(256), 3, "conv3")))
        h = ResidualBottleneck(ch(64), self.dtype, self.param_dtype, name="residual_3")(h, train)
        h = up(ch(64), "upsample_r3")(h)
        h = jnp.concatenate([f0, h], axis=-1).astype(jnp.float32)
        residual = NarrowConv(3, 3, padding=0 if official else 1,
                              kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                              param_dtype=self.param_dtype, name="concat_reduction")(h)
        if official:
            c = OFFICIAL_CROP
            # caffe_to_rgb(rgb_to_caffe(x)[crop] + residual), written so that a zero
            # residual returns the cropped input bit for bit.
            return x[:, c:-c, c:-c] + residual[..., ::-1] / 255.0
        return x + residual


def _vgg_conv(features: int, name: str, dtype: Dtype, param_dtype: Dtype,
              dilation: int = 1) -> nn.Conv:
    return Conv(features, (3, 3), padding=((dilation, dilation), (dilation, dilation)),
                   kernel_dilation=(dilation, dilation), kernel_init=_vgg_conv_init,
                   bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=param_dtype,
                   name=name)


class VGG16Classifier(nn.Module):
    """VGG-16 image classifier.

    Five blocks of 2, 2, 3, 3, 3 3x3 convs (``conv{b}_{i}``, 64, 128, 256, 512, 512
    channels times ``width``, ReLU), each followed by a 2x2 stride-2 max pool, then
    ``fc6`` -> ReLU -> dropout -> ``fc7`` -> ReLU -> dropout -> ``fc8`` (logits).

    Attributes:
      num_classes: number of classes.
      width: multiplier of the conv channels.
      fc_features: width of fc6 and fc7.
      head: ``"flatten"`` (the original: fc6 reads the flattened 7x7 pool5 map, in
        (h, w, c) order, so inputs must be 224x224) or ``"avg"`` (global average pool
        of pool5, any input of at least 32x32).
      dropout_rate: dropout after fc6 and fc7 in training (a ``"dropout"`` rng is then
        needed when the rate is > 0).
      normalize: subtract the ImageNet mean and divide by its std inside (the input
        is then [0, 1] RGB).
      dtype, param_dtype: computation and parameter dtypes; logits are float32.

    ``__call__(x, train)`` returns float32 logits (B, num_classes).
    """

    num_classes: int
    width: float = 1.0
    fc_features: int = 4096
    head: str = "flatten"
    dropout_rate: float = 0.5
    normalize: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def check_input(self, x: jax.Array) -> None:
        """Raises ValueError unless ``x`` suits the head (see the class docstring)."""
        _check_images(x, "VGG16Classifier")
        if self.head not in HEADS:
            raise ValueError(f"head: unknown VGG16Classifier head {self.head!r}; choose one of {HEADS}")
        h, w = x.shape[1], x.shape[2]
        if self.head == "flatten" and (h, w) != (224, 224):
            raise ValueError(f"VGG16Classifier input: head='flatten' needs 224x224 images "
                             f"(a 7x7 pool5 map), got shape {tuple(x.shape)}; "
                             "use head='avg' for other sizes")
        if h < 32 or w < 32:
            raise ValueError(f"VGG16Classifier input: H and W must be at least 32, "
                             f"got shape {tuple(x.shape)}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_classes(self.num_classes)
        _check_rate(self.dropout_rate)
        self.check_input(x)
        x = _normalize_imagenet(x) if self.normalize else x.astype(jnp.float32)
        x = x.astype(self.dtype)
        for b, (channels, n) in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, n + 1):
                x = nn.relu(_vgg_conv(_scaled(channels, self.width), f"conv{b}_{i}",
                                      self.dtype, self.param_dtype)(x))
            x = pooling.max_pool(x, (2, 2), strides=(2, 2))
        if self.head == "flatten":
            x = x.reshape(x.shape[0], -1)
        else:
            x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(self.dtype)
        for name in ("fc6", "fc7"):
            x = nn.Dense(self.fc_features, kernel_init=_vgg_dense_init,
                         bias_init=nn.initializers.zeros, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=name)(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        return nn.Dense(self.num_classes, kernel_init=_vgg_dense_init,
                        bias_init=nn.initializers.zeros, dtype=jnp.float32,
                        param_dtype=self.param_dtype, name="fc8")(x.astype(jnp.float32))


#: The layers of :class:`VGG16Features` whose ReLU outputs a perceptual loss compares.
PERCEPTUAL_LAYERS = ("conv1_2", "conv2_2", "conv3_3")
#: torchvision ``vgg16().features`` index of each conv of the first three blocks.
TORCHVISION_VGG16_CONVS = {"conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7,
                           "conv3_1": 10, "conv3_2": 12, "conv3_3": 14}


class VGG16Features(nn.Module):
    """The first three blocks of :class:`VGG16Classifier` (same layer names, so a
    classifier's or torchvision's ImageNet weights load into it), returning the ReLU
    outputs of ``conv1_2``, ``conv2_2`` and ``conv3_3`` (relu1_2, relu2_2, relu3_3), the
    maps of a VGG perceptual loss. Input: [0, 1] RGB, ImageNet-normalised inside."""

    width: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        x = _normalize_imagenet(x).astype(self.dtype)
        outputs = []
        for b, (channels, n) in enumerate(VGG16_BLOCKS[:3], start=1):
            if b > 1:
                x = pooling.max_pool(x, (2, 2), strides=(2, 2))
            for i in range(1, n + 1):
                x = nn.relu(_vgg_conv(_scaled(channels, self.width), f"conv{b}_{i}",
                                      self.dtype, self.param_dtype)(x))
            outputs.append(x.astype(jnp.float32))
        return outputs


class DeepLabLargeFOV(nn.Module):
    """DeepLab-v1 LargeFOV semantic segmenter (VGG-16 based, output stride 8).

    VGG-16 convs ``conv1_1`` .. ``conv5_3`` (ReLU); ``pool1``-``pool3`` are 3x3
    stride-2 max pools padded by 1 (each maps a side n to ceil(n / 2)), ``pool4`` a
    3x3 stride-1 max pool padded by 1, ``conv5_x`` have dilation 2, ``pool5`` is a
    3x3 stride-1 max pool then a 3x3 stride-1 average pool (padded by 1, padding
    counted, as Caffe does). Then ``fc6`` (3x3, dilation ``dilation``, ``fc_features``)
    -> ReLU -> dropout -> ``fc7`` (1x1) -> ReLU -> dropout -> ``fc8`` (1x1,
    ``num_classes``, float32).

    Attributes:
      num_classes: number of classes (21 for PASCAL VOC).
      width: multiplier of the VGG conv channels.
      fc_features: channels of fc6 and fc7.
      dilation: dilation of fc6 (12 in LargeFOV).
      dropout_rate: dropout after fc6 and fc7 in training (needs a ``"dropout"`` rng
        when > 0).
      normalize: ImageNet mean / std normalisation inside ([0, 1] RGB input).
      dtype, param_dtype: computation and parameter dtypes; logits are float32.

    ``__call__(x, train)`` returns float32 logits (B, ceil(H / 8), ceil(W / 8),
    num_classes); :func:`upsample_logits` brings them to the image size. The two
    halves are also methods: ``features`` (the stride-8 pool5 map) and ``predict``
    (fc6 .. fc8 on such a map).
    """

    num_classes: int = 21
    width: float = 1.0
    fc_features: int = 1024
    dilation: int = 12
    dropout_rate: float = 0.5
    normalize: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    output_stride = 8  # class constant, not a module field

    def setup(self):
        _check_classes(self.num_classes)
        _check_rate(self.dropout_rate)
        if isinstance(self.dilation, bool) or not isinstance(self.dilation, int) or self.dilation < 1:
            raise ValueError(f"dilation: expected a positive int, got {self.dilation!r}")
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        convs = {}
        for b, (channels, n) in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, n + 1):
                name = f"conv{b}_{i}"
                convs[name] = _vgg_conv(_scaled(channels, self.width), name,
                                        dilation=2 if b == 5 else 1, **kw)
        self.convs = convs
        d = self.dilation
        self.fc6 = Conv(self.fc_features, (3, 3), padding=((d, d), (d, d)),
                           kernel_dilation=(d, d), kernel_init=_vgg_conv_init,
                           bias_init=nn.initializers.zeros, **kw)
        self.fc7 = Conv(self.fc_features, (1, 1), kernel_init=_vgg_conv_init,
                           bias_init=nn.initializers.zeros, **kw)
        self.fc8 = Conv(self.num_classes, (1, 1), kernel_init=_vgg_dense_init,
                           bias_init=nn.initializers.zeros, dtype=jnp.float32,
                           param_dtype=self.param_dtype)
        self.dropout = nn.Dropout(self.dropout_rate)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The stride-8 map after pool5 and its average pool, (B, ceil(H/8), ceil(W/8), C)."""
        del train
        _check_images(x, "DeepLabLargeFOV")
        x = _normalize_imagenet(x) if self.normalize else x.astype(jnp.float32)
        x = x.astype(self.dtype)
        pad = ((1, 1), (1, 1))
        for b, (_, n) in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, n + 1):
                x = nn.relu(self.convs[f"conv{b}_{i}"](x))
            stride = 2 if b <= 3 else 1
            x = pooling.max_pool(x, (3, 3), strides=(stride, stride), padding=pad)
        return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=pad, count_include_pad=True)

    def predict(self, features: jax.Array, train: bool = False) -> jax.Array:
        """fc6 -> fc7 -> fc8 on a ``features`` map: float32 logits of the same H, W."""
        x = features.astype(self.dtype)
        x = self.dropout(nn.relu(self.fc6(x)), deterministic=not train)
        x = self.dropout(nn.relu(self.fc7(x)), deterministic=not train)
        return self.fc8(x.astype(jnp.float32))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.predict(self.features(x, train), train)


def upsample_logits(logits: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of (B, h, w, C) logits to (B, height, width, C), float32.

    Half-pixel centres (``align_corners=False``), as ``jax.image.resize``; no
    antialiasing, so shrinking is plain bilinear interpolation too.
    """
    if logits.ndim != 4:
        raise ValueError(f"upsample_logits: expected logits (B, h, w, C), got shape {tuple(logits.shape)}")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"upsample_logits: {name} must be a positive int, got {v!r}")
    shape = (logits.shape[0], height, width, logits.shape[-1])
    return jax.image.resize(logits.astype(jnp.float32), shape, method="bilinear", antialias=False)


__all__ = [
    "CAFFE_BGR_MEAN",
    "FORMS",
    "HEADS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFICIAL_CROP",
    "VGG16_BLOCKS",
    "DeepLabLargeFOV",
    "Denoiser",
    "ResidualBottleneck",
    "VGG16Classifier",
    "caffe_to_rgb",
    "denoiser_crop",
    "param_count",
    "rgb_to_caffe",
    "upsample_logits",
]
