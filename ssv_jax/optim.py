"""Optimiser and learning-rate schedule from ``cfg.optim`` (optax)."""

from __future__ import annotations

import optax


def lr_schedule(optim_cfg, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """ "step": lr x decay_rate every decay_epochs epochs (the paper: 0.95 every 5);
    "constant"; "cosine": cosine decay to 0 over training. Optional linear warm-up."""
    lr = float(optim_cfg.lr)
    warm = int(optim_cfg.warmup_steps)
    if optim_cfg.schedule == "step":
        sched = optax.exponential_decay(
            lr,
            transition_steps=max(int(optim_cfg.decay_epochs * steps_per_epoch), 1),
            decay_rate=float(optim_cfg.decay_rate),
            staircase=True,
        )
    elif optim_cfg.schedule == "constant":
        sched = optax.constant_schedule(lr)
    elif optim_cfg.schedule == "cosine":
        sched = optax.cosine_decay_schedule(lr, max(total_steps - warm, 1))
    else:
        raise ValueError(
            f"optim.schedule {optim_cfg.schedule!r} is not one of ('step', 'constant', 'cosine')."
        )
    if warm > 0:
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warm), sched], [warm])
    return sched


def make_optimizer(optim_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    parts = []
    if optim_cfg.clip_grad_norm and optim_cfg.clip_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.clip_grad_norm)))
    wd = float(optim_cfg.weight_decay)
    if optim_cfg.name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=wd))
    else:
        if wd > 0:  # L2 added to the gradient, as torch.optim.Adam/SGD's weight_decay
            parts.append(optax.add_decayed_weights(wd))
        if optim_cfg.name == "adam":
            parts.append(optax.adam(schedule))
        elif optim_cfg.name == "sgd":
            parts.append(optax.sgd(schedule, momentum=0.9))
        else:
            raise ValueError(
                f"optim.name {optim_cfg.name!r} is not one of ('adam', 'adamw', 'sgd')."
            )
    return optax.chain(*parts)
