"""One table of every environment id: its lazy entry point, its paper-default kwargs and its protocol metadata.

``register_all()`` (run on ``import clenv``) puts every row into gymnasium's registry. Entry points are strings, so
registering imports neither torch nor torchvision. ``protocol(env_id)`` gives what is not an env kwarg: the probe
budget gamma (Table 5), the paper's backbone, where the data comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium

__all__ = ["EnvDef", "ENV_TABLE", "register_all", "protocol", "env_ids"]

SUPERVISED = "clenv.envs.supervised:SupervisedStreamEnv"


@dataclass(frozen=True)
class EnvDef:
    """One registered id. ``kwargs`` are the paper defaults (every one overridable in ``gym.make``);
    ``gamma`` is the fast-adaptation probe budget in steps; ``backbone`` the paper's network for it; ``benchmark``
    the key of the paper benchmark whose tuned hyperparameters apply (``agents.paper_hparams``; the Fashion-MNIST
    and digits ids take the MNIST rows of their family, families without an MNIST table the CIFAR-10 one)."""

    id: str
    entry_point: str
    kwargs: dict[str, Any]
    description: str
    data: str
    gamma: int | None = None
    backbone: str | None = None
    paper: str = ""
    tags: tuple[str, ...] = field(default=())
    benchmark: str | None = None


def _sup(id, benchmark, dataset, stream, description, data, *, gamma=None, backbone="mlp", paper="",
         tags=("plasticity",), **kwargs):
    return EnvDef(id, SUPERVISED, {"dataset": dataset, "stream": stream, **kwargs}, description, data, gamma,
                  backbone, paper, tags, benchmark)


_TV = "torchvision (downloaded when missing) or CLENV_DATA"
_FMNIST = "Debian dataset-fashion-mnist, torchvision FashionMNIST or CLENV_DATA"
_DIGITS = "scikit-learn (ships with the package)"
_NMS = "NeuMoSync Table 5 / Appendix B.3"

# Table 5 of NeuMoSync: epochs, batch, samples per task, gamma; task counts from Appendix B.3.
_RANDOM_LABEL = dict(num_tasks=50, samples_per_task=1200, epochs_per_task=200, batch_size=16, augment=True)
_SHUFFLE = dict(num_tasks=100, samples_per_task=5000, epochs_per_task=20, batch_size=16, augment=True)
_PERMUTED = dict(num_tasks=50, samples_per_task=10000, epochs_per_task=1, batch_size=64, augment=True)
# NGM-SGD's scripts: batch 128, 200 iterations per context (Split MNIST), 400 (Rotated MNIST); spec 1.4.
_NGM = "NGM-SGD (arXiv 2507.14056), authors' scripts"
_NGM_SPLIT = dict(num_tasks=5, joint=True, steps_per_task=200, batch_size=128, augment=False)
_NGM_ROTATED = dict(num_tasks=3, joint=True, steps_per_task=400, batch_size=128, augment=False,
                    test_samples_per_task=1000)
_SPLIT5 = dict(num_tasks=5, classes_per_task=2, epochs_per_task=1, batch_size=64, augment=False)
# 004_49f6201e6e679480.txt (adapters in associative memories): disjoint class splits with task-local labels, 3 epochs
# per task (Appendix A.2); the batch size is not in the paper.
_AM = "adapter memories (004_49f6201e6e679480.txt) Table 1"
_AM_SPLIT = dict(stream="class_split", disjoint=True, labels="local", epochs_per_task=3, batch_size=64,
                 augment=False)

ENV_TABLE: tuple[EnvDef, ...] = (
    _sup("RandomLabelMNIST-v0", "random_label_mnist", "mnist", "random_label",
         "1,200 images per task with uniformly random labels",
         _TV, gamma=750, paper=_NMS, **_RANDOM_LABEL),
    _sup("RandomLabelCIFAR10-v0", "random_label_cifar10", "cifar10", "random_label",
         "1,200 images per task with uniformly random labels",
         _TV, gamma=187, paper=_NMS, **{**_RANDOM_LABEL, "num_tasks": 100, "epochs_per_task": 50}),
    _sup("ShuffleCIFAR10-v0", "shuffle_cifar10", "cifar10", "label_shuffle",
         "5,000 images; a new class-label permutation per task",
         _TV, gamma=312, paper=_NMS, **_SHUFFLE),
    _sup("PermutedMNIST-v0", "permuted_mnist", "mnist", "permuted", "10,000 images; a fixed pixel permutation per task",
         _TV, gamma=156, paper=_NMS, **_PERMUTED),
    _sup("ClassSplitCIFAR100-v0", "class_split_cifar100", "cifar100", "class_split",
         "5 new classes per task, 500 samples each",
         _TV, gamma=156, backbone="cnn", paper=_NMS, num_tasks=20, classes_per_task=5, samples_per_class=500,
         epochs_per_task=20, batch_size=16, augment=True),
    _sup("ClassSplitTinyImageNet-v0", "class_split_tiny_imagenet", "tiny_imagenet", "class_split",
         "binary tasks on 2 new classes, 600 images each (served at 32x32, the input C.7's CNN is counted for)",
         "ImageFolder tree tiny-imagenet-200/ under CLENV_DATA", gamma=750, backbone="cnn", paper=_NMS,
         num_tasks=100, classes_per_task=2, samples_per_class=600, epochs_per_task=20, batch_size=16, augment=True,
         image_size=32),
    _sup("SplitCIFAR10-v0", "split_cifar10", "cifar10", "class_split",
         "5 tasks of 2 classes (forgetting, class-incremental)",
         _TV, backbone="cnn_wide", paper="NeuMoSync Appendix F", tags=("forgetting",), **_SPLIT5),
    _sup("ShuffleMiniImageNet-v0", "shuffle_mini_imagenet", "mini_imagenet", "label_shuffle",
         "mini-ImageNet 84x84 with a label shuffle per "
         "task, 4 epochs", "ImageFolder tree mini-imagenet/ under CLENV_DATA", backbone="resnet18", paper=_NMS,
         num_tasks=20, epochs_per_task=4, batch_size=16, augment=True),
    _sup("SplitImageNet-v0", "split_imagenet", "imagenet", "class_split",
         "500 tasks of 5 random ImageNet classes x 600 samples",
         "ImageFolder tree imagenet/ under CLENV_DATA", backbone="resnet50", paper=_NMS, num_tasks=500,
         classes_per_task=5, samples_per_class=600, disjoint=False, labels="local", epochs_per_task=5,
         batch_size=16, augment=True),
    # The same families on the data these machines have.
    _sup("RandomLabelFashionMNIST-v0", "random_label_mnist", "fashion_mnist", "random_label",
         "Random-Label MNIST protocol on "
         "Fashion-MNIST", _FMNIST, gamma=750, paper=_NMS, **_RANDOM_LABEL),
    _sup("ShuffleFashionMNIST-v0", "shuffle_cifar10", "fashion_mnist", "label_shuffle",
         "Shuffle protocol on Fashion-MNIST",
         _FMNIST, gamma=312, paper=_NMS, **_SHUFFLE),
    _sup("PermutedFashionMNIST-v0", "permuted_mnist", "fashion_mnist", "permuted",
         "Permuted-MNIST protocol on Fashion-MNIST",
         _FMNIST, gamma=156, paper=_NMS, **_PERMUTED),
    _sup("SplitFashionMNIST-v0", "split_cifar10", "fashion_mnist", "class_split", "5 tasks of 2 classes (forgetting)",
         _FMNIST, backbone="mlp", paper="NeuMoSync Appendix F", tags=("forgetting",), **_SPLIT5),
    # Digits are 8x8: fewer samples and no augmentation (a 1-pixel shift is an eighth of the image).
    _sup("RandomLabelDigits-v0", "random_label_mnist", "digits", "random_label",
         "256 digits per task with random labels", _DIGITS,
         gamma=64, num_tasks=30, samples_per_task=256, epochs_per_task=20, batch_size=16, augment=False),
    _sup("ShuffleDigits-v0", "shuffle_cifar10", "digits", "label_shuffle",
         "all 1,437 training digits, a label shuffle per task",
         _DIGITS, gamma=89, num_tasks=30, epochs_per_task=2, batch_size=16, augment=False),
    _sup("PermutedDigits-v0", "permuted_mnist", "digits", "permuted",
         "all 1,437 training digits, a pixel permutation per task",
         _DIGITS, gamma=89, num_tasks=30, epochs_per_task=2, batch_size=16, augment=False),
    # Adapter memories: one adapter per task recalled from a memory (task-incremental / multi-task switching). The
    # backbone is what other agents get; adapter_memory brings its own ViT (agents/adapters/vit.py).
    EnvDef("SplitFashionMNIST-5S-v0", SUPERVISED, dict(dataset="fashion_mnist", num_tasks=5, classes_per_task=2,
                                                       **_AM_SPLIT),
           "5 tasks of 2 classes, labels 0-1 within each task, 3 epochs", _FMNIST, backbone="mlp", paper=_AM,
           tags=("forgetting", "memory")),
    EnvDef("SplitDigits-5S-v0", SUPERVISED, dict(dataset="digits", num_tasks=5, classes_per_task=2,
                                                 **{**_AM_SPLIT, "batch_size": 16}),
           "5 tasks of 2 digit classes, labels 0-1 within each task, 3 epochs, batch 16", _DIGITS, backbone="mlp",
           paper=_AM, tags=("forgetting", "memory")),
    EnvDef("SplitCIFAR100-20S-v0", SUPERVISED, dict(dataset="cifar100", num_tasks=20, classes_per_task=5,
                                                    **_AM_SPLIT),
           "C100-20S: 20 tasks of 5 classes, task-local labels, 3 epochs", _TV, backbone="cnn", paper=_AM,
           tags=("forgetting", "memory")),
    EnvDef("SplitCIFAR100-50S-v0", SUPERVISED, dict(dataset="cifar100", num_tasks=50, classes_per_task=2,
                                                    **_AM_SPLIT),
           "C100-50S: 50 tasks of 2 classes, task-local labels, 3 epochs", _TV, backbone="cnn", paper=_AM,
           tags=("forgetting", "memory")),
    EnvDef("SplitTinyImageNet-50S-v0", SUPERVISED, dict(dataset="tiny_imagenet", num_tasks=50, classes_per_task=4,
                                                        image_size=64, **_AM_SPLIT),
           "TINet-50S: 50 tasks of 4 classes at 64x64, task-local labels, 3 epochs",
           "ImageFolder tree tiny-imagenet-200/ under CLENV_DATA", backbone="cnn", paper=_AM,
           tags=("forgetting", "memory")),
    EnvDef("SplitTinyImageNet-100S-v0", SUPERVISED, dict(dataset="tiny_imagenet", num_tasks=100, classes_per_task=2,
                                                         image_size=64, **_AM_SPLIT),
           "TINet-100S: 100 tasks of 2 classes at 64x64, task-local labels, 3 epochs",
           "ImageFolder tree tiny-imagenet-200/ under CLENV_DATA", backbone="cnn", paper=_AM,
           tags=("forgetting", "memory")),
    # Stability-gap protocols of NGM-SGD (arXiv 2507.14056, shared/specs/methods.md 1.4): joint training, context k
    # sampling with replacement from the union of tasks 1..k, a fixed number of iterations per context.
    _sup("JointSplitMNIST-v0", "ngm_split_mnist", "mnist", "ordered_split",
         "joint Split MNIST: contexts {0,1}, {0..3}, ... {0..9}, 5 x 200 iterations", _TV, paper=_NGM,
         tags=("stability",), **_NGM_SPLIT),
    _sup("JointSplitFashionMNIST-v0", "ngm_split_mnist", "fashion_mnist", "ordered_split",
         "the joint Split MNIST protocol on Fashion-MNIST", _FMNIST, paper=_NGM, tags=("stability",), **_NGM_SPLIT),
    _sup("JointSplitCIFAR10-v0", "ngm_split_cifar10", "cifar10", "ordered_split",
         "joint Split CIFAR-10: cumulative class pairs, 5 x 400 iterations, batch 256", _TV, backbone="resnet18",
         paper=_NGM, tags=("stability",), **{**_NGM_SPLIT, "steps_per_task": 400, "batch_size": 256, "augment": True}),
    _sup("JointRotatedMNIST-v0", "ngm_rotated_mnist", "mnist", "rotated",
         "joint Rotated MNIST: 0, 80, 160 degrees, 3 x 400 iterations", _TV, paper=_NGM, tags=("stability",),
         **_NGM_ROTATED),
    _sup("JointRotatedFashionMNIST-v0", "ngm_rotated_mnist", "fashion_mnist", "rotated",
         "the joint Rotated MNIST protocol on Fashion-MNIST", _FMNIST, paper=_NGM, tags=("stability",),
         **_NGM_ROTATED),
    _sup("JointPermutedMNIST-v0", "ngm_permuted_mnist", "mnist", "permuted",
         "joint Permuted MNIST: 3 pixel permutations, 3 x 200 iterations", _TV, paper=_NGM, tags=("stability",),
         **{**_NGM_ROTATED, "steps_per_task": 200}),
    _sup("JointDomainCIFAR100-v0", "ngm_domain_cifar100", "cifar100", "superclass_domain",
         "joint Domain CIFAR-100: the 20 superclasses as labels, other fine classes per context, 3 x 400 iterations",
         _TV, backbone="resnet18", paper=_NGM, tags=("stability",),
         **{**_NGM_ROTATED, "batch_size": 256, "augment": True}),
    # Split mini-ImageNet: 5 x 10 classes; the iterations per context are not in the sources (spec 1.4): 400, as the
    # other ResNet protocols.
    _sup("JointSplitMiniImageNet-v0", "ngm_split_mini_imagenet", "mini_imagenet", "class_split",
         "joint Split mini-ImageNet: cumulative 10-class contexts of 84x84 images, 5 x 400 iterations, batch 256",
         "ImageFolder tree mini-imagenet/ under CLENV_DATA", backbone="resnet18", paper=_NGM, tags=("stability",),
         num_tasks=5, classes_per_task=10, samples_per_class=500, joint=True, steps_per_task=400, batch_size=256,
         augment=False),
    # Functional Task Networks, Experiment 1 (002_b6d509c9f1140765.txt): 3 tasks on the same inputs, other targets.
    EnvDef("ConceptShiftClassification-v0", "clenv.envs.concept_shift:ConceptShiftEnv",
           dict(task="classification", num_tasks=3, steps_per_task=1000, batch_size=256),
           "2-D inputs through a fixed encoder to a 24-D latent; each task reads its own 8-D block, sin(8 u) > 0 is "
           "the class; 3 x 1,000 steps, batch 256", "synthetic (generated from the seed)", backbone="mlp",
           paper="FTN Experiment 1", tags=("forgetting", "concept_shift")),
    EnvDef("ConceptShiftRegression-v0", "clenv.envs.concept_shift:ConceptShiftEnv",
           dict(task="regression", num_tasks=3, steps_per_task=1000, batch_size=256),
           "the classification stream's inputs with sin(8 u) as a regression target: the action is the prediction, "
           "the reward its negative MSE", "synthetic (generated from the seed)", backbone="mlp",
           paper="FTN Experiment 1", tags=("forgetting", "concept_shift")),
    # FTN Experiment 2 (Appendix E): six text style transformations of the same sentences, byte-level tokens.
    EnvDef("StyleShiftText-v0", "clenv.envs.style_shift:StyleShiftTextEnv",
           dict(num_tasks=6, steps_per_task=200, batch_size=8, max_length=96),
           "six style transformations (upper, lower, reverse_words, double_words, starred_vowels, pirate) of the "
           "same sentences as [BOS] source [SEP] target [EOS] bytes; the action is the next token at every position, "
           "the reward its per-token accuracy on the target; 6 x 200 steps, batch 8", "the corpus ships with clenv",
           paper="FTN Experiment 2", tags=("forgetting", "concept_shift", "text")),
    # Continual RL streams (clenv/envs/rl.py): episodes inside tasks, info["stream_done"] ends the stream.
    EnvDef("ContinualCartPole-v0", "clenv.envs.rl:ContinualCartPoleEnv",
           dict(num_tasks=10, steps_per_task=10_000, max_episode_steps=500, spread=2.0),
           "CartPole whose gravity, pole length, pole mass and force change every task", "gymnasium (built in)",
           backbone="mlp", tags=("rl", "plasticity")),
    EnvDef("ContinualAcrobot-v0", "clenv.envs.rl:ContinualAcrobot",
           dict(num_tasks=10, steps_per_task=20_000, mode="permute"),
           "Acrobot-v1 with a new observation permutation per task", "gymnasium (built in)",
           backbone="mlp", tags=("rl", "plasticity")),
    EnvDef("ContinualMountainCar-v0", "clenv.envs.rl:ContinualMountainCar",
           dict(num_tasks=10, steps_per_task=50_000, mode="affine"),
           "MountainCar-v0 with a new affine observation perturbation per task", "gymnasium (built in)",
           backbone="mlp", tags=("rl", "plasticity")),
    EnvDef("TaskSequence-v0", "clenv.envs.rl:TaskSequenceEnv",
           dict(tasks=["CartPole-v1"], steps_per_task=10_000),
           "any list of gymnasium ids (with kwargs) as the tasks of one stream", "gymnasium (built in)",
           backbone="mlp", tags=("rl",)),
    # The RL plasticity protocol (docs/rl.md): two input maps of CartPole, each visited 4 times.
    EnvDef("PermutedCartPole-v0", "clenv.envs.rl:PermutedCartPole",
           dict(num_tasks=8, steps_per_task=12_000, distinct_tasks=2, mode="permute_affine", spread=1.0),
           "CartPole through 2 observation maps (permutation, sign, scale, offset) visited in turn, 8 tasks x "
           "12,000 steps: return on revisits against the first visit; about 3 min per DQN run on 2 cores",
           "gymnasium (built in)", backbone="mlp", tags=("rl", "plasticity")),
)


def env_ids(tag: str | None = None) -> list[str]:
    return [d.id for d in ENV_TABLE if tag is None or tag in d.tags]


def protocol(env_or_id) -> EnvDef | None:
    """The table row for an env id, a made env or its spec; None for envs not in the table."""
    if isinstance(env_or_id, str):
        env_id = env_or_id.split(":")[-1]
    else:
        spec = getattr(env_or_id, "spec", None) or getattr(getattr(env_or_id, "unwrapped", None), "spec", None)
        env_id = spec.id if spec is not None else None
    return next((d for d in ENV_TABLE if d.id == env_id), None)


def register_all() -> None:
    """Register every row with gymnasium (idempotent)."""
    for d in ENV_TABLE:
        if d.id not in gymnasium.registry:
            gymnasium.register(d.id, entry_point=d.entry_point, kwargs=dict(d.kwargs))
