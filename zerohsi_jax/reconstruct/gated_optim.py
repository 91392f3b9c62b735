"""Gated Optax transformations and the scanned optimisation loop every stage runs.

A gate applies an inner optimiser only on some steps (the HSI fit's root-only warm-up and
every-5th-step colour fine-tuning); `scan_minimize` is the one `lax.scan` over a stage's
iterations."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax


class GatedState(NamedTuple):
    count: jax.Array
    inner: optax.OptState


def gated(inner: optax.GradientTransformation, active: Callable[[jax.Array], jax.Array]
          ) -> optax.GradientTransformation:
    """Apply `inner` on the steps where `active(step)` holds; elsewhere the update is zero and the
    inner state (Adam's moments and count) is left untouched, as if the step had not happened."""

    def init(params):
        return GatedState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        # A branch, not a select: where the step count is the same for every vmapped seed (a fresh
        # state per frame), the skipped steps cost nothing, which matters for a large inner state
        # (the colour net's Adam moments). Under a batched count it becomes the select.
        def apply():
            return inner.update(updates, state.inner, params)

        def skip():
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        new_updates, new_inner = jax.lax.cond(active(state.count), apply, skip)
        return new_updates, GatedState(state.count + 1, new_inner)

    return optax.GradientTransformation(init, update)


def after(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """`inner` frozen for the first `steps` steps."""
    return gated(inner, lambda count: count >= steps)


def every(inner: optax.GradientTransformation, k: int) -> optax.GradientTransformation:
    """`inner` applied on steps 0, k, 2k, ... (k <= 0: never)."""
    if k <= 0:
        return optax.set_to_zero()
    return gated(inner, lambda count: count % k == 0)


def labelled_adam(learning_rates: Mapping[str, float], schedules: Mapping[str, Callable] | None = None):
    """optax.multi_transform of one Adam per label; `schedules[label]` wraps that label's Adam
    (e.g. `lambda opt: after(opt, 30)`). A learning rate of 0 freezes the label."""
    transforms = {}
    for label, lr in learning_rates.items():
        opt = optax.adam(lr) if lr > 0 else optax.set_to_zero()
        wrap = (schedules or {}).get(label)
        transforms[label] = wrap(opt) if (wrap is not None and lr > 0) else opt
    return transforms


def restart_gates(opt_state):
    """`opt_state` with every gate's step count back at zero and the inner states kept: a new
    frame's warm-up and every-k-th schedule start again while Adam's moments carry over."""
    def reset(node):
        if isinstance(node, GatedState):
            return GatedState(jnp.zeros_like(node.count), node.inner)
        return node

    return jax.tree.map(reset, opt_state, is_leaf=lambda x: isinstance(x, GatedState))


class Minimized(NamedTuple):
    """What `scan_minimize` gives."""

    params: optax.Params
    losses: jax.Array  # (iterations,): the loss of the parameters before each step
    aux: object  # the loss function's aux, stacked over the iterations
    opt_state: optax.OptState  # after the last step


def scan_minimize(loss_fn: Callable | Sequence[Callable], params, optimizer: optax.GradientTransformation,
                  iterations: int, *, opt_state=None, held=None, branch: Callable | None = None) -> Minimized:
    """`iterations` steps of `optimizer` on `loss_fn(params) -> (loss, aux)`, as one `lax.scan`
    with the Optax state in the carry, starting from `opt_state` (default: a fresh one).

    With `held` (a pytree the loss carries from step to step without differentiating it, such as
    network outputs evaluated on some steps only), `loss_fn` is a sequence of losses
    `f(params, held) -> (loss, (aux, held))` and `branch(step)` picks the one of each step (step
    counts from 0). Each branch is differentiated on its own and the step switches between the
    differentiated branches: differentiating through a switch would make every branch carry the
    residuals of all of them. The step index is the same in every vmapped batch member, so the
    switch stays a branch under vmap rather than a select of all branches."""

    def step(carry, index):
        p, state, h = carry
        if held is None:
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        else:
            differentiated = [lambda p, h, f=f: jax.value_and_grad(f, has_aux=True)(p, h) for f in loss_fn]
            (loss, (aux, h)), grads = jax.lax.switch(branch(index), differentiated, p, h)
            h = jax.lax.stop_gradient(h)
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state, h), (loss, aux)

    state0 = optimizer.init(params) if opt_state is None else opt_state
    params, state0, held = batched_with(params, (params, state0, held))
    (params, state, _), (losses, aux) = jax.lax.scan(step, (params, state0, held), jnp.arange(iterations))
    return Minimized(params, losses, aux, state)


def batched_with(anchor, tree):
    """`tree` with the same values, its floating-point leaves batched wherever any floating-point
    leaf of `anchor` is (under `vmap`); outside `vmap`, or with no batched anchor, unchanged.

    Why: a fresh Adam state's moments (`zeros_like`), the object's zero start and the held network
    outputs are unbatched constants under the seeds' vmap, and become batched after one step.
    `lax.scan`'s batching rule finds that out by batching the whole step again (a fixpoint; the
    HSI step is ~10k equations), so marking them batched up front saves one pass of the trace:
    13.3 -> 10.7 s for the tiny demo's HSI program. `where(True, leaf, anchor)` is `leaf` exactly
    (NaN included), and XLA folds it away. Integer leaves (the gates' step counts) are left alone:
    a batched count would turn the gates' branches into selects of both."""
    floats = [x for x in jax.tree.leaves(anchor) if eqx.is_inexact_array(x) and x.size > 0]
    if not floats:
        return tree
    # One scalar that depends on every anchor leaf: batched if any of them is.
    scalar = sum(jnp.ravel(x)[0].astype(jnp.float32) for x in floats)

    def mark(leaf):
        if not eqx.is_inexact_array(leaf):
            return leaf
        return jnp.where(True, leaf, scalar.astype(leaf.dtype))

    return jax.tree.map(mark, tree)

