"""Built-in architectures, addressed by name so a proof can name its model in JSON.

Constructors deliberately do no custom initialization: the initial weights W_0 are drawn by
`pol.step.init.apply_init` from a recorded generator, so the verifier can check them against the
same rules (see `pol.step.init.expected_distributions`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "build_model",
    "mlp",
    "lenet",
    "logreg",
    "resnet20",
    "resnet50",
    "LeNet",
    "CifarResNet",
    "hf_causal_lm",
]


def _pos_int(value: object, name: str) -> int:
    """Kwargs come from JSON in a possibly hostile proof: insist on real positive integers."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _dropout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------------
# Small models
# --------------------------------------------------------------------------------------------------


def mlp(in_features: int, num_classes: int, hidden: Sequence[int] = (64,),
        dropout: float = 0.0) -> nn.Module:
    """Linear/ReLU(/Dropout) stack; flattens from dim 1 so [N, F] and [N, C, H, W] both work."""
    in_features = _pos_int(in_features, "in_features")
    num_classes = _pos_int(num_classes, "num_classes")
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden must be a list of positive integers, got {hidden!r}")
    widths = [_pos_int(h, "hidden[i]") for h in hidden]
    p = _dropout(dropout)
    layers: list[nn.Module] = [nn.Flatten(1)]
    prev = in_features
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        if p > 0:
            layers.append(nn.Dropout(p))
        prev = w
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)


def logreg(in_features: int, num_classes: int) -> nn.Module:
    """Multinomial logistic regression: one Linear layer on the flattened input."""
    in_features = _pos_int(in_features, "in_features")
    num_classes = _pos_int(num_classes, "num_classes")
    return nn.Sequential(nn.Flatten(1), nn.Linear(in_features, num_classes))


class LeNet(nn.Module):
    """conv3x3(16)-relu-conv3x3(32)-relu-maxpool2-fc(64)-relu-(dropout)-fc.

    Small enough to train on 8x8 digits in seconds on a CPU, which is what the quick demos need.
    Flat input [N, C*H*W] is reshaped to [N, C, H, W] so the raw digits arrays can be fed directly.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels = _pos_int(in_channels, "in_channels")
        self.image_size = _pos_int(image_size, "image_size")
        num_classes = _pos_int(num_classes, "num_classes")
        p = _dropout(dropout)
        if self.image_size < 2:
            raise ValueError("image_size must be at least 2 (the network max-pools by 2)")
        pooled = self.image_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(self.in_channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        head: list[nn.Module] = [nn.Flatten(1), nn.Linear(32 * pooled * pooled, 64), nn.ReLU()]
        if p > 0:
            head.append(nn.Dropout(p))
        head.append(nn.Linear(64, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.reshape(x.shape[0], self.in_channels, self.image_size, self.image_size)
        elif x.dim() == 3 and self.in_channels == 1:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x))


def lenet(in_channels: int = 1, num_classes: int = 10, image_size: int = 8,
          dropout: float = 0.0) -> nn.Module:
    """Small LeNet-style CNN (see `LeNet`)."""
    return LeNet(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                 dropout=dropout)


# --------------------------------------------------------------------------------------------------
# ResNets for 32x32 input
# --------------------------------------------------------------------------------------------------


class _ShortcutA(nn.Module):
    """Option-A shortcut (He et al. 2016): subsample spatially, zero-pad channels; no params."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            _ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out_planes:
            # Projection shortcut (option B), as in the ImageNet ResNet-50.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with a 3x3 stride-1 stem and no max-pool, the usual adaptation to 32x32 images."""

    def __init__(self, block: type[nn.Module], num_blocks: Sequence[int], widths: Sequence[int],
                 num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        expansion = getattr(block, "expansion", 1)
        stem = widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        stages: list[nn.Module] = []
        in_planes = stem
        for i, (n, w) in enumerate(zip(num_blocks, widths)):
            blocks: list[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, w, stride))
                in_planes = w * expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-20 (He et al. 2016, sec. 4.2): 3x3 BasicBlocks, 16/32/64 channels, option-A
    shortcuts; about 0.27M parameters. The model used in the proof-of-learning paper's CIFAR-10
    experiments."""
    return CifarResNet(_BasicBlock, (3, 3, 3), (16, 32, 64),
                       _pos_int(num_classes, "num_classes"), _pos_int(in_channels, "in_channels"))


def resnet50(num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Bottleneck ResNet-50 (3/4/6/3 blocks) adapted to 32x32 input: 3x3 stride-1 stem, no
    max-pool (the proof-of-learning paper's CIFAR-100 model); about 23.7M parameters."""
    return CifarResNet(_Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512),
                       _pos_int(num_classes, "num_classes"), _pos_int(in_channels, "in_channels"))


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

class _Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.fc_proj = nn.Linear(4 * n_embd, n_embd)
        self.drop = nn.Dropout(dropout)
        self.n_head = n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.fc_proj(nn.functional.gelu(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    """A nanoGPT-style decoder-only transformer (no weight tying, so every parameter has one
    name)."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError("n_embd must be a multiple of n_head")
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(_Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.ln_f(x))


def gpt(vocab_size: int = 256, block_size: int = 128, n_layer: int = 4, n_head: int = 4,
        n_embd: int = 128, dropout: float = 0.0) -> nn.Module:
    return GPT(_pos_int(vocab_size, "vocab_size"), _pos_int(block_size, "block_size"),
               _pos_int(n_layer, "n_layer"), _pos_int(n_head, "n_head"),
               _pos_int(n_embd, "n_embd"), _dropout(dropout))


# --------------------------------------------------------------------------------------------------
# Hugging Face transformers models (pip install 'pol[hf]'; transformers imported when one is built)
# --------------------------------------------------------------------------------------------------

# config entries that name where a config came from, not the architecture: left out of a spec
HF_CONFIG_DROPPED = ("transformers_version", "_name_or_path", "_commit_hash")
# attention kernels a proof may name: torch's own (any other name may fetch kernels from the Hub)
HF_ATTENTION = ("eager", "sdpa")


def _hf_logits(module: nn.Module, args: object, output: object) -> object:
    """Forward hook: a transformers model's output -> its logits (the tensor pol's loss takes)."""
    return getattr(output, "logits", output)


def hf_causal_lm(config: dict, init_seed: int = 0,
                 attn_implementation: str = "sdpa") -> nn.Module:
    """A Hugging Face transformers causal language model (`AutoModelForCausalLM`) rebuilt from its
    config: `config` is `PretrainedConfig.to_dict()` (JSON, with its `model_type`), W_0 the model's
    own initialization drawn under `torch.manual_seed(init_seed)` (the global RNG restored after),
    so W_0 is a pure function of (config, init_seed); `attn_implementation` "eager" or "sdpa".
    `model(input_ids)` returns the logits [B, T, V] (a forward hook), for the loss
    `causal_lm_cross_entropy`. transformers is imported here, only when such a model is built."""
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError("config must be a transformers config dict with its model_type")
    if isinstance(init_seed, bool) or not isinstance(init_seed, int) or init_seed < 0:
        raise ValueError(f"init_seed must be an integer >= 0, got {init_seed!r}")
    if attn_implementation not in HF_ATTENTION:
        raise ValueError(f"attn_implementation must be one of {', '.join(HF_ATTENTION)}, got "
                         f"{attn_implementation!r}")
    if "auto_map" in config or "quantization_config" in config:
        raise ValueError("a config with auto_map (remote code) or quantization_config is not "
                         "rebuilt")
    try:
        import transformers
    except ImportError:
        raise ValueError("this model is a Hugging Face transformers model: install transformers "
                         "(pip install 'pol[hf]')") from None
    kwargs = {k: v for k, v in config.items() if k not in HF_CONFIG_DROPPED and k != "model_type"}
    try:
        cfg = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = transformers.AutoModelForCausalLM.from_config(
                cfg, attn_implementation=attn_implementation, trust_remote_code=False)
    except (KeyError, TypeError, ValueError, AttributeError, ImportError, OSError) as e:
        raise ValueError(f"transformers cannot build {config['model_type']!r} from this config: "
                         f"{type(e).__name__}: {e}") from None
    model.register_forward_hook(_hf_logits)
    return model


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet": lenet,
    "logreg": logreg,
    "resnet20": resnet20,
    "resnet50": resnet50,
    "gpt": gpt,
    "hf-causal-lm": hf_causal_lm,
}


def build_model(arch: str, **kwargs: object) -> nn.Module:
    """Build a registered architecture; every failure is a ValueError so callers that validate a
    proof's model spec need to catch only one exception type."""
    try:
        factory = ARCHITECTURES[arch]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise ValueError(
            f"bad arguments for architecture {arch!r}: {e}; "
            f"signature is {arch}{inspect.signature(factory)}"
        ) from None
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for architecture {arch!r}: {e}") from None
