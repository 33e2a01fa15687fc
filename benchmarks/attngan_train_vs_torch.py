"""Side-by-side timing of one AttnGAN training iteration: attngan_jax vs the PyTorch re-expression of the reference.

    python benchmarks/attngan_train_vs_torch.py                        # shapes, then birds at batch 20
    python benchmarks/attngan_train_vs_torch.py --quick                # same configs at batch 4, one timed iteration
    python benchmarks/attngan_train_vs_torch.py --configs tiny --quick # seconds: the smoke test's run
    python benchmarks/attngan_train_vs_torch.py --configs birds --repeats 5 --out birds.json
    python benchmarks/attngan_train_vs_torch.py --configs shapes --torch_threads 1  # on a machine loaded by others

One iteration is what the reference's condGANTrainer.train does per batch (data loading excluded: the same
random batch every iteration): the frozen DAMSM text encoder on the captions; the generator forward in train
mode with fresh noise; every stage's discriminator updated on (real, fake, wrong) pairs; the generator updated
on the adversarial loss of every stage + lambda * DAMSM loss (the frozen image encoder on the last stage's
images) + KL; the generator's EMA (0.999). Adam(0.5, 0.999), lr 2e-4 for G and every D, as the reference.
- attngan_jax: `GANTrainer.d_step` then `GANTrainer.g_step` (attngan_jax.gan.trainer) compiled by its
  `compile_steps` (state donated) on one CPU device, as `python -m attngan_jax.train` runs them; their compile
  time is reported apart. The generator runs forward once, in d_step, as in the reference: d_step hands g_step
  the images and the forward's VJP residuals (see the trainer's docstring).
- PyTorch (eager): G_NET / D_NET* of tests/helpers/attngan_torch.py, the reference losses of
  tests/helpers/attngan_torch_losses.py (BCE on sigmoid outputs, the per-caption DAMSM word loss), the DAMSM
  encoders of tests/test_damsm_parity.py (RNN_ENCODER; CNN_ENCODER = Inception-v3 at 299 px), the reference's
  Adam and EMA. Base sizes below the reference's 64 (shapes) use attngan_torch's `base_size`, the same
  generalisation attngan_jax makes; the shapes DAMSM's small CNN, which the reference does not have, is restated
  in `_torch_models`.
Random weights on both sides (timing only); the parent checks that both sides' G and D parameter counts agree.

Measured per side, each in its own subprocess (clean peak memory, no shared thread pools):
- compile s: attngan_jax's lower + compile of d_step and g_step (PyTorch: none);
- first iter s: the first iteration (JAX: after compiling; PyTorch: allocator and lazy initialisations);
- D s / G s / iter s: the D part (text encoder, G forward, D updates), the G part (G loss, backward, step, EMA;
  JAX: g_step) and the whole iteration, medians of --repeats iterations after the first;
- peak RSS: the process's peak resident memory (VmHWM, _measure.peak_rss_gib), imports, init and compile
  included; RSS after imports: the same before any model is built (the PyTorch side imports jax through the
  test helpers).

Configs:
- birds: configs/attngan/attngan_birds.py, the reference bird_attn2.yml GAN (gf_dim 32, df_dim 64, r_num 2,
  stages 64/128/256, words_num 18, lambda 5, batch 20) on the reference DAMSM (Inception-v3 image encoder,
  bi-LSTM text encoder, 256-d features, CUB's 5,450-word vocabulary);
- shapes: configs/attngan/attngan_shapes.py (batch 16) on a DAMSM of configs/attngan/damsm_shapes.py's
  architecture (small CNN width 16 at 64 px, 64-d word embeddings, 128-d features);
- tiny: configs/attngan/attngan_shapes.py:tiny (batch 8, its random tiny DAMSM).
--quick: batch 4 and one timed iteration (a smoke run; --batch / --repeats override).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]  # this checkout's packages, then _measure
from _measure import fmt, machine, median, peak_rss_gib, run_child  # noqa: E402
CONFIGS = ("tiny", "shapes", "birds")
SIDES = ("torch", "attngan_jax")
N_WORDS = {"birds": 5450, "shapes": 64, "tiny": 64}  # CUB's vocabulary; shapes captions use ~40 words


# ----------------------------------------------------------------------------------------- configs (parent)

CONFIG_FILES = {"birds": "attngan_birds.py", "shapes": "attngan_shapes.py", "tiny": "attngan_shapes.py:tiny"}


def build_config(name: str, batch_size: int | None = None):
  """The attngan_jax training config of a benchmark configuration (its own batch size unless given)."""
  from t2i_common.config import load_config
  if name not in CONFIG_FILES:
    raise SystemExit(f"unknown config {name!r}; use one of {', '.join(CONFIGS)}.")
  config = load_config(os.path.join(ROOT, "configs", "attngan", CONFIG_FILES[name]))
  if batch_size is not None:
    config.train.batch_size = batch_size
  return config


def damsm_spec(name: str, config) -> dict:
  """The frozen DAMSM's architecture: the reference's for birds, damsm_shapes.py's for shapes, tiny's own."""
  if name == "birds":
    return {"n_words": N_WORDS[name], "text_embed": 300, "backbone": "inception_v3", "cnn_width": 0,
            "image_size": 0}
  if name == "shapes":
    return {"n_words": N_WORDS[name], "text_embed": 64, "backbone": "small_cnn", "cnn_width": 16, "image_size": 64}
  r = config.damsm.random
  return {"n_words": N_WORDS[name], "text_embed": int(r.embed_dim), "backbone": "small_cnn",
          "cnn_width": int(r.small_cnn_width), "image_size": int(r.image_size)}


def side_spec(name: str, batch_size: int | None) -> dict:
  """Everything a side needs, as plain JSON (the PyTorch side builds nothing from the JAX config)."""
  config = build_config(name, batch_size)
  m, opt, loss = config.model, config.optimizer, config.loss
  return {"name": name, "batch_size": int(config.train.batch_size), "fast_compile": bool(config.train.fast_compile),
          "model": m.to_dict(), "sizes": [int(m.base_size) * 2 ** i for i in range(int(m.branch_num))],
          "damsm": damsm_spec(name, config), "lambda": float(loss.damsm_lambda),
          "gammas": [float(loss.damsm.gamma1), float(loss.damsm.gamma2), float(loss.damsm.gamma3)],
          "kl_weight": float(loss.kl_weight), "g_lr": float(opt.g_lr), "d_lr": float(opt.d_lr),
          "betas": [float(opt.b1), float(opt.b2)], "eps": float(opt.eps), "ema_decay": float(config.train.ema_decay)}


def make_batch(spec: dict, seed: int = 0) -> dict:
  """A random batch (numpy, NHWC images in [-1, 1]): captions of random lengths, one of full length (so the
  reference's pad_packed_sequence gives all words_num positions), distinct class ids (no same-class masking)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  b, t = spec["batch_size"], int(spec["model"]["words_num"])
  lengths = rng.integers(1, t + 1, b).astype(np.int32)
  lengths[0] = t
  tokens = rng.integers(1, spec["damsm"]["n_words"], (b, t)).astype(np.int32)
  tokens[np.arange(t)[None] >= lengths[:, None]] = 0
  batch = {"tokens": tokens, "length": lengths, "class_id": np.arange(b, dtype=np.int32)}
  for size in spec["sizes"]:
    batch[f"image_{size}"] = rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
  return batch


def _iterate(run_d, run_g, repeats: int) -> dict:
  """Times one first iteration, then `repeats` more split into the D and G parts (each fn blocks)."""
  start = time.perf_counter()
  run_d()
  run_g()
  first = time.perf_counter() - start
  d_times, g_times, totals = [], [], []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run_d()
    t1 = time.perf_counter()
    run_g()
    t2 = time.perf_counter()
    d_times.append(t1 - t0)
    g_times.append(t2 - t1)
    totals.append(t2 - t0)
  return {"first_iter_s": first, "d_s": median(d_times), "g_s": median(g_times), "iter_s": median(totals),
          "iter_times_s": totals}


def _check_finite(side: str, losses: dict) -> dict:
  import math
  bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
  if bad:
    raise SystemExit(f"{side}: non-finite losses after the timed iterations: {bad}")
  return losses


# ---------------------------------------------------------------------------------------------- JAX side

def bench_jax(spec: dict, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  from attngan_jax.gan.damsm import FrozenDAMSM
  from attngan_jax.gan.trainer import GANTrainer, compile_steps
  from attngan_jax.damsm.image_encoder import ImageEncoder
  from attngan_jax.text import END_TOKEN, Vocabulary
  from attngan_jax.damsm.text_encoder import TextEncoder
  from t2i_common import parallel
  rss_imports = peak_rss_gib()
  config = build_config(spec["name"], spec["batch_size"])
  d = spec["damsm"]
  dim = int(config.model.embedding_dim)
  vocab = Vocabulary([END_TOKEN] + [f"w{i}" for i in range(1, d["n_words"])])
  text_model = TextEncoder(n_words=d["n_words"], embed_dim=d["text_embed"], output_dim=dim)
  image_model = ImageEncoder(embed_dim=dim, backbone=d["backbone"], small_cnn_width=d["cnn_width"] or 32)
  init_side = d["image_size"] or 64  # the Inception resizes to 299 itself

  def init_damsm(rng):
    k_text, k_image = jax.random.split(rng)
    return {"text": text_model.init(k_text, jnp.zeros((1, 2), jnp.int32), jnp.ones((1,), jnp.int32)),
            "image": image_model.init(k_image, jnp.zeros((1, init_side, init_side, 3)))}

  # One device (XLA's CPU device spans all cores), set up as GANTrainLoop does it; initialisations run once:
  # jitted with the cheap compiler settings (eager init dispatches every op on its own: slower than compiling).
  mesh = parallel.create_mesh(None, jax.devices()[:1])
  run_once = parallel.run_once_compiler_options()
  with jax.set_mesh(mesh):
    damsm_vars = jax.jit(init_damsm, out_shardings=parallel.replicated(mesh),
                         compiler_options=run_once)(jax.random.key(1))
    damsm = FrozenDAMSM(text_model, image_model, damsm_vars, vocab, image_size=d["image_size"] or None,
                        source="random initialisation (benchmark)")
    trainer = GANTrainer(config, damsm)
    shardings = parallel.param_shardings(jax.eval_shape(trainer.init_state, jax.random.key(0)), mesh)
    state = jax.jit(trainer.init_state, out_shardings=shardings, compiler_options=run_once)(jax.random.key(0))
    batch = parallel.global_batch(make_batch(spec), mesh)
    start = time.perf_counter()
    d_step, g_step = compile_steps(trainer, state, damsm_vars, batch, shardings, mesh)
    compile_s = time.perf_counter() - start
  box = {"state": state, "metrics": {}}

  def run_d():  # also keeps the generator forward (images, VJP residuals) d_step hands to g_step
    box["state"], metrics, box["forward"] = d_step(box["state"], damsm_vars, batch)
    box["metrics"]["d_loss"] = metrics["d_loss"]
    jax.block_until_ready((box["state"], box["forward"]))

  def run_g():
    box["state"], metrics = g_step(box["state"], damsm_vars, batch, box.pop("forward"))
    box["metrics"]["g_loss"] = metrics["g_loss"]
    jax.block_until_ready(box["state"])

  res = _iterate(run_d, run_g, repeats)
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))
  s = box["state"]
  return {"compile_s": compile_s, **res, "peak_rss_gib": peak_rss_gib(), "rss_after_imports_gib": rss_imports,
          "g_params": count(s.g_params), "d_params": count(s.d_params),
          "losses": _check_finite("attngan_jax", {k: float(v) for k, v in box["metrics"].items()})}


# ------------------------------------------------------------------------------------------ PyTorch side

def _torch_models(spec: dict):
  """(G_NET, [D per stage], text encoder, image encoder) of the spec, at the reference initialisation.

  Base sizes below 64 (shapes) have no reference: tests/helpers/attngan_torch.py generalises G_NET and the
  discriminators as attngan_jax does (its `base_size`); the text encoder of tests/test_damsm_parity.py takes the
  shapes DAMSM's sizes. The shapes DAMSM's small CNN (attngan_jax.damsm.small_cnn), which the reference does not
  have, is restated here.
  """
  from torch import nn
  from torch.nn import functional as F
  from attngan_torch import G_NET, TorchGanConfig, discriminators, weights_init
  from test_damsm_parity import TorchCNNEncoder, TorchTextEncoder

  m = spec["model"]
  cfg = TorchGanConfig(gf_dim=m["gf_dim"], df_dim=m["df_dim"], r_num=m["r_num"], branch_num=m["branch_num"],
                       base_size=m["base_size"], z_dim=m["z_dim"], condition_dim=m["condition_dim"],
                       embedding_dim=m["embedding_dim"], mask_bug=m["reference_mask_bug"])
  net_g = G_NET(cfg)
  net_g.apply(weights_init)
  nets_d = discriminators(cfg)
  for net in nets_d:
    net.apply(weights_init)

  d = spec["damsm"]
  dim = cfg.embedding_dim
  text_encoder = TorchTextEncoder(d["n_words"], d["text_embed"], dim)  # birds: the reference's 300 / 256
  if d["backbone"] == "inception_v3":
    image_encoder = TorchCNNEncoder(dim)
  else:
    width, side = d["cnn_width"], d["image_size"]

    class SmallCNNEncoder(nn.Module):
      """attngan_jax.damsm.small_cnn.SmallCNN + the image encoder's heads: (regions B x D x h x w, global B x D)."""

      def __init__(self):
        super().__init__()
        spec_ = [(3, width, 2), (width, 2 * width, 2), (2 * width, 4 * width, 2), (4 * width, 8 * width, 1),
                 (8 * width, 8 * width, 2)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 4 if s == 2 else 3, s, 1) for i, o, s in spec_)
        self.norms = nn.ModuleList(nn.GroupNorm(min(8, o), o) for _, o, _ in spec_)
        self.emb_features = nn.Conv2d(8 * width, dim, 1, bias=False)
        self.emb_cnn_code = nn.Linear(8 * width, dim)

      def forward(self, x):
        if x.shape[-1] != side:
          x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
          x = F.leaky_relu(norm(conv(x)), 0.2)
          if i == 3:
            regions = x
        return self.emb_features(regions), self.emb_cnn_code(x.mean(dim=(2, 3)))

    image_encoder = SmallCNNEncoder()
  for enc in (text_encoder, image_encoder):
    enc.eval()
    for p in enc.parameters():
      p.requires_grad_(False)
  return net_g, nets_d, text_encoder, image_encoder


def bench_torch(spec: dict, repeats: int, threads: int | None = None) -> dict:
  import torch
  if threads:
    torch.set_num_threads(threads)
  sys.path.insert(0, os.path.join(ROOT, "tests", "helpers"))
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  from attngan_torch_losses import reference_discriminator_loss, reference_generator_loss, reference_kl_loss
  rss_imports = peak_rss_gib()
  torch.manual_seed(0)
  net_g, nets_d, text_encoder, image_encoder = _torch_models(spec)
  net_g.train()
  for net in nets_d:
    net.train()
  betas = tuple(spec["betas"])
  opt_g = torch.optim.Adam(net_g.parameters(), lr=spec["g_lr"], betas=betas, eps=spec["eps"])
  opts_d = [torch.optim.Adam(net.parameters(), lr=spec["d_lr"], betas=betas, eps=spec["eps"]) for net in nets_d]
  avg_param_g = [p.detach().clone() for p in net_g.parameters()]
  decay = spec["ema_decay"]

  batch = make_batch(spec)
  captions = torch.tensor(batch["tokens"], dtype=torch.long)
  cap_lens = [int(n) for n in batch["length"]]
  class_ids = batch["class_id"]
  imgs = [torch.tensor(batch[f"image_{s}"]).permute(0, 3, 1, 2).contiguous() for s in spec["sizes"]]
  mask = captions == 0
  noise = torch.empty(spec["batch_size"], spec["model"]["z_dim"])
  g1, g2, g3 = spec["gammas"]
  box, losses = {}, {}

  def run_d():  # condGANTrainer.train up to the D updates
    with torch.no_grad():
      words_embs, sent_emb = text_encoder(captions, torch.tensor(cap_lens))
    noise.normal_(0, 1)
    fake_imgs, _, mu, logvar = net_g(noise, sent_emb, words_embs, mask)
    total = 0.0
    for i, net in enumerate(nets_d):
      net.zero_grad()
      err = reference_discriminator_loss(net, imgs[i], fake_imgs[i], sent_emb)
      err.backward()
      opts_d[i].step()
      total += float(err)
    losses["d_loss"] = total
    box.update(fake_imgs=fake_imgs, mu=mu, logvar=logvar, words_embs=words_embs, sent_emb=sent_emb)

  def run_g():  # the G update and the EMA of its parameters
    net_g.zero_grad()
    total, _ = reference_generator_loss(nets_d, image_encoder, box["fake_imgs"], box["words_embs"], box["sent_emb"],
                                        cap_lens, class_ids, gamma1=g1, gamma2=g2, gamma3=g3, lam=spec["lambda"])
    total = total + spec["kl_weight"] * reference_kl_loss(box["mu"], box["logvar"])
    total.backward()
    opt_g.step()
    with torch.no_grad():
      for p, avg in zip(net_g.parameters(), avg_param_g):
        avg.mul_(decay).add_(p, alpha=1 - decay)
    losses["g_loss"] = float(total)
    box.clear()

  res = _iterate(run_d, run_g, repeats)
  count = lambda nets: int(sum(p.numel() for net in nets for p in net.parameters()))
  return {"compile_s": None, **res, "peak_rss_gib": peak_rss_gib(), "rss_after_imports_gib": rss_imports,
          "g_params": count([net_g]), "d_params": count(nets_d), "torch_threads": torch.get_num_threads(),
          "losses": _check_finite("torch", losses)}


# -------------------------------------------------------------------------------------------------- parent

def _run_side(side: str, spec: dict, repeats: int, torch_threads: int | None = None) -> dict:
  """One side in a fresh process (its own peak memory); the JAX side on the CPU, where the PyTorch side runs."""
  cmd = [sys.executable, os.path.abspath(__file__), "--_side", side, "--_spec", json.dumps(spec),
         "--repeats", str(repeats)]
  if side == "torch" and torch_threads:
    cmd += ["--torch_threads", str(torch_threads)]
  return run_child(cmd, side, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def table(rows: list[tuple[str, int, dict]]) -> str:
  lines = ["| config | batch | side | compile s | first iter s | D s | G s | iter s | peak RSS GiB | "
           "RSS after imports GiB |", "|" + "---|" * 10]
  for name, batch, res in rows:
    for side in SIDES:
      r = res[side]
      lines.append(f"| {name} | {batch} | {side} | {fmt(r['compile_s'], '.1f')} | {r['first_iter_s']:.3f} | "
                   f"{r['d_s']:.3f} | {r['g_s']:.3f} | {r['iter_s']:.3f} | {r['peak_rss_gib']:.2f} | "
                   f"{r['rss_after_imports_gib']:.2f} |")
    t, j = res["torch"], res["attngan_jax"]
    lines.append(f"| {name} | {batch} | ratio jax/torch | | | {j['d_s'] / t['d_s']:.2f} | {j['g_s'] / t['g_s']:.2f} | "
                 f"{j['iter_s'] / t['iter_s']:.2f} | {j['peak_rss_gib'] / t['peak_rss_gib']:.2f} | |")
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="shapes,birds", help=f"comma-separated, of {', '.join(CONFIGS)}")
  p.add_argument("--quick", action="store_true", help="batch 4 and one timed iteration (a smoke run)")
  p.add_argument("--batch", type=int, default=None, help="batch size of every config (default: the config's; "
                 "birds 20, shapes 16, tiny 8; --quick: 4)")
  p.add_argument("--repeats", type=int, default=None, help="timed iterations after the first (default 3; --quick 1)")
  p.add_argument("--torch_threads", type=int, default=None,
                 help="PyTorch intra-op threads (default: PyTorch's, one per core). On a machine loaded by other "
                 "jobs 1 avoids the thread barriers that then dominate PyTorch's many small ops")
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  p.add_argument("--_side", choices=SIDES, help=argparse.SUPPRESS)
  p.add_argument("--_spec", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  repeats = args.repeats or (1 if args.quick else 3)
  if args._side:  # child process: one side's measurement, JSON on the last stdout line
    spec = json.loads(args._spec)
    res = bench_torch(spec, repeats, args.torch_threads) if args._side == "torch" else bench_jax(spec, repeats)
    print(json.dumps(res))
    return
  batch = args.batch or (4 if args.quick else None)
  if batch is not None and batch < 2:
    raise SystemExit(f"--batch {batch}: the wrong-pair term and BatchNorm need a batch of at least 2.")
  names = [n.strip() for n in args.configs.split(",") if n.strip()]
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    raise SystemExit(f"unknown config(s) {unknown}; use {', '.join(CONFIGS)}.")
  header = f"machine: {machine()}"
  print(header, flush=True)
  rows, start = [], time.perf_counter()
  for name in names:
    spec = side_spec(name, batch)
    res = {side: _run_side(side, spec, repeats, args.torch_threads) for side in SIDES}
    t, j = res["torch"], res["attngan_jax"]
    if (t["g_params"], t["d_params"]) != (j["g_params"], j["d_params"]):
      raise SystemExit(f"{name}: the two sides' models differ: G {t['g_params']:,} vs {j['g_params']:,} parameters, "
                       f"D {t['d_params']:,} vs {j['d_params']:,}.")
    rows.append((name, spec["batch_size"], res))
    print(f"{name} (G {j['g_params']:,} + D {j['d_params']:,} parameters): {json.dumps(res)}", flush=True)
  wall = time.perf_counter() - start
  print("\n" + table(rows))
  threads = sorted({res["torch"]["torch_threads"] for _, _, res in rows})
  print(f"\n{repeats} timed iteration(s) per side after the first; PyTorch intra-op threads "
        f"{', '.join(map(str, threads))}; whole run {wall:.0f} s; load average now {os.getloadavg()[0]:.1f}")
  if args.out:
    out = {"machine": header[len("machine: "):], "repeats": repeats, "wall_s": wall,
           "configs": {name: {"batch_size": b, **res,
                              "ratio_jax_torch": {"iter_s": res["attngan_jax"]["iter_s"] / res["torch"]["iter_s"],
                                                  "peak_rss": res["attngan_jax"]["peak_rss_gib"]
                                                  / res["torch"]["peak_rss_gib"]}}
                       for name, b, res in rows}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(out, f, indent=2)
    print(f"figures written to {args.out}")


if __name__ == "__main__":
  main()
