"""pytorch-fid and torch-fidelity as parity references, with random weights and without downloads.

torchvision: PyPI has no CPU build; the CUDA wheel's compiled ops fail to load beside torch's CPU build, and once
it sits in site-packages, transformers' `import torchvision` raises (operator torchvision::nms does not exist)
in every process that has not stubbed `torchvision._meta_registrations`. So it is installed outside
site-packages, and only processes that ask for it (these tests) put it on sys.path with the stub:

  pip install --no-deps --target "$(python -c 'import sys; print(sys.prefix)')/torchvision-nodeps" "torchvision==0.28.*"
  pip install --no-deps pytorch-fid==0.3.0 torch-fidelity==0.4.0

An importable torchvision (e.g. a working CPU build) is used as it is. The models need only torchvision's
pure-PyTorch modules (REFERENCE.md section 4).
"""
from __future__ import annotations

import os
import sys
import types

import pytest

TORCHVISION_DIR = os.path.join(sys.prefix, "torchvision-nodeps")
INSTALL_HINT = (f'pip install --no-deps --target {TORCHVISION_DIR} "torchvision==0.28.*" && '
                "pip install --no-deps pytorch-fid==0.3.0 torch-fidelity==0.4.0")


def import_torchvision():
  """torchvision's Python modules with its compiled ops stubbed out, or pytest.skip with the install line."""
  pytest.importorskip("torch", reason="parity tests need PyTorch (the 'parity' extra)")
  sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
  if os.path.isdir(TORCHVISION_DIR) and TORCHVISION_DIR not in sys.path:
    sys.path.append(TORCHVISION_DIR)
  try:
    import torchvision
  except ImportError:
    pytest.skip(f"torchvision is not installed; {INSTALL_HINT}")
  return torchvision


def import_pytorch_fid():
  """(pytorch_fid.inception, pytorch_fid.fid_score), or pytest.skip."""
  import_torchvision()
  try:
    from pytorch_fid import fid_score, inception
  except ImportError:
    pytest.skip(f"pytorch-fid is not installed; {INSTALL_HINT}")
  return inception, fid_score


def import_torch_fidelity_isc():
  """torch_fidelity.metric_isc, or pytest.skip."""
  import_torchvision()
  try:
    from torch_fidelity import metric_isc
  except ImportError:
    pytest.skip(f"torch-fidelity is not installed; {INSTALL_HINT}")
  return metric_isc


def _randomise(model, seed: int) -> None:
  """Random conv / fc weights (He-normal from `seed`) and random BatchNorm affine and statistics,
  so a block that reads the wrong running statistic or pools the wrong way shows up in the features."""
  import torch
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
      # He-normal: the signal keeps its scale through the ~40 conv layers, so the features depend on the image
      # (with torch's default init they shrink towards what the BatchNorm biases alone give).
      m.weight.data = torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5
      if m.bias is not None:
        m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)
    elif isinstance(m, torch.nn.BatchNorm2d):
      c = m.num_features
      m.weight.data = 1 + 0.1 * torch.randn(c, generator=g)
      m.bias.data = 0.1 * torch.randn(c, generator=g)
      m.running_mean.data = 0.1 * torch.randn(c, generator=g)
      m.running_var.data = 0.5 + torch.rand(c, generator=g)


def pytorch_fid_models(seed: int = 0, output_blocks=(3,)):
  """(pytorch-fid's InceptionV3(output_blocks) in eval mode, the fid_inception_v3() module under it), random weights.

  output_blocks: pytorch-fid's block indices (3: 2048-d pool3, 2: the 768-channel Mixed_6e map).

  pytorch-fid's constructor downloads the FID weights inside fid_inception_v3(); here its download function
  returns the freshly built network's own state dict instead (so its strict load_state_dict passes), and the
  weights are randomised afterwards. The inner module's state_dict() has the layout of the released weights
  file pt_inception-2015-12-05-6726825d.pth (torchvision names, FID blocks, fc 1008 x 2048, no AuxLogits).
  """
  inception, _ = import_pytorch_fid()
  built = []
  original_builder, original_download = inception._inception_v3, inception.load_state_dict_from_url

  def record(*args, **kwargs):
    built.append(original_builder(*args, **kwargs))
    return built[-1]

  inception._inception_v3 = record
  inception.load_state_dict_from_url = lambda *args, **kwargs: built[-1].state_dict()
  try:
    model = inception.InceptionV3(list(output_blocks))
  finally:
    inception._inception_v3, inception.load_state_dict_from_url = original_builder, original_download
  (inner,) = built
  assert type(inner.Mixed_7c).__name__ == "FIDInceptionE_2" and inner.fc.out_features == 1008
  _randomise(inner, seed)
  return model.eval(), inner.eval()
