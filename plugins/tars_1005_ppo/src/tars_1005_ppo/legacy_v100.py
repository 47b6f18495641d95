# tensorflow ships no type information: its imports are Any, the rest of this module stays strict
# mypy: disable-error-code="import-untyped"
"""A faithful reproduction of the T.A.R.S. v1.0.0 PPO trainer *with its memory leak*. Not for production.

It exists so that the soak judge can be shown to fail, the benchmark's "before" column is measured rather
than assumed, and the sandbox trainer service has something to run while the TARS-1005 flag is off. The
production path (``tars_1005_ppo.PPOTrainer``) never imports it.

v1.0.0's source is not part of this repository: this module is written from the leak sources that the
seed's fix ("buffer clearing + TF graph reset") and the TensorFlow issue trackers name. It is the same
algorithm and hyperparameters as the fixed trainer (same environments, sampling, GAE and
loss), written the way v1.0.0 was, with the leak sources the TensorFlow trackers document:

1. rollout tensors appended to Python lists that are never cleared ("kept for episode logging"); training
   slices the newest ``n_steps`` entries, so PPO is unaffected while memory grows every iteration;
2. the annealed learning rate and clip range passed to the ``tf.function`` train step as Python floats;
   the schedule is recomputed every ``SCHEDULE_EVERY`` iterations, and each new value retraces the step
   and the function cache keeps every graph (tensorflow #24726, #26311);
3. an "old policy" built per iteration with ``clone_model`` and never released, without
   ``clear_session()``, so Keras global state grows too;
4. ``model.predict`` called in the training loop for the bootstrap value (keras #13118, tensorflow #33009);
5. a metrics history of loss tensors that is never trimmed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import tensorflow as tf

from tars_1005_ppo.config import PPOConfig
from tars_1005_ppo.trainer import IterationStats, _log_softmax, _TrainerBase, gae_into


class LeakyPPOTrainer(_TrainerBase):
    """v1.0.0: trains as well as :class:`~tars_1005_ppo.PPOTrainer` and leaks megabytes per iteration."""

    implementation = "legacy"
    SCHEDULE_EVERY = 10

    def __init__(self, config: PPOConfig | None = None) -> None:
        super().__init__(config or PPOConfig())
        # Leak 1: the rollout "memory", appended to forever.
        self.states: list[tf.Tensor] = []
        self.actions: list[tf.Tensor] = []
        self.logprobs: list[tf.Tensor] = []
        self.rewards: list[tf.Tensor] = []
        self.ends: list[tf.Tensor] = []
        self.values: list[tf.Tensor] = []
        self.old_actors: list[Any] = []  # leak 3
        self.history: list[dict[str, tf.Tensor]] = []  # leak 5
        self._train_step = tf.function(self._train_step_impl)  # no input signature
        self._lr = self.config.learning_rate
        self._clip = self.config.clip_range

    def _train_step_impl(
        self,
        obs: tf.Tensor,
        actions: tf.Tensor,
        old_logp: tf.Tensor,
        adv: tf.Tensor,
        returns: tf.Tensor,
        lr: float,
        clip: float,
    ) -> tf.Tensor:
        self.optimizer.learning_rate.assign(lr)
        return self._ppo_update(obs, actions, old_logp, adv, returns, clip)

    def tracing_count(self) -> int:
        return int(self._train_step.experimental_get_tracing_count())

    def buffer_bytes(self) -> int:
        lists = (self.states, self.actions, self.logprobs, self.rewards, self.ends, self.values)
        return sum(int(np.prod(t.shape)) * t.dtype.size for lst in lists for t in lst)

    def retained_items(self) -> int:
        return len(self.states) * 6 + len(self.old_actors) + len(self.history) + len(self.episode_returns)

    def train_iteration(self) -> IterationStats:
        cfg = self.config
        started = time.perf_counter()
        if self.iteration % self.SCHEDULE_EVERY == 0:
            frac = self._anneal_fraction()
            self._lr = cfg.learning_rate * frac  # Python floats: leak 2
            self._clip = cfg.clip_range * frac
        lr, clip = self._lr, self._clip

        obs = self._next_obs
        for _ in range(cfg.n_steps):
            obs_t = tf.convert_to_tensor(obs)
            logits = self.actor(obs_t)  # eager call per step
            values = tf.squeeze(self.critic(obs_t), -1)
            actions, logp = self._sample(logits.numpy())
            next_obs, rewards, ends, cut = self._env_step(actions)
            if cut is not None:
                boot = tf.squeeze(self.critic(tf.convert_to_tensor(np.nan_to_num(cut))), -1).numpy()
                rewards = rewards + cfg.gamma * np.where(np.isnan(cut[:, 0]), 0.0, boot).astype(np.float32)
            self.states.append(obs_t)
            self.actions.append(tf.convert_to_tensor(actions))
            self.logprobs.append(tf.convert_to_tensor(logp))
            self.rewards.append(tf.convert_to_tensor(rewards))
            self.ends.append(tf.convert_to_tensor(ends))
            self.values.append(values)
            obs = next_obs
        self._next_obs = obs
        last_values = self.critic.predict(obs, verbose=0)[:, 0]  # leak 4

        n = cfg.n_steps
        rewards_a = tf.stack(self.rewards[-n:]).numpy()
        ends_a = tf.stack(self.ends[-n:]).numpy()
        values_a = tf.stack(self.values[-n:]).numpy()
        advantages = np.zeros_like(rewards_a)  # new arrays every iteration, as v1.0.0 did
        gae_into(advantages, rewards_a, ends_a, values_a, last_values, cfg.gamma, cfg.gae_lambda)
        returns = advantages + values_a

        old_actor = tf.keras.models.clone_model(self.actor)  # leak 3
        old_actor.set_weights(self.actor.get_weights())
        self.old_actors.append(old_actor)
        flat_obs = tf.reshape(tf.stack(self.states[-n:]), (-1, self.obs_dim))
        flat_actions = tf.reshape(tf.stack(self.actions[-n:]), (-1,))
        old_logp = np.take_along_axis(
            _log_softmax(old_actor(flat_obs).numpy().astype(np.float64)), flat_actions.numpy()[:, None], axis=-1
        )[:, 0].astype(np.float32)
        flat_adv = advantages.reshape(-1)
        flat_ret = returns.reshape(-1)

        batch, mb = cfg.batch_size, cfg.minibatch_size
        results: list[tf.Tensor] = []
        for _ in range(cfg.n_epochs):
            order = self.rng.permutation(batch)
            for start in range(0, batch - mb + 1, mb):
                idx = order[start : start + mb]
                results.append(
                    self._train_step(
                        tf.gather(flat_obs, idx),
                        tf.gather(flat_actions, idx),
                        old_logp[idx],
                        flat_adv[idx],
                        flat_ret[idx],
                        lr,
                        clip,
                    )
                )
        mean = tf.reduce_mean(tf.stack(results), axis=0)
        self.history.append({"loss": mean[0], "entropy": mean[3], "all": tf.stack(results)})  # leak 5
        return self._finish_iteration(started, mean.numpy())

    def _checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(actor=self.actor, critic=self.critic, optimizer=self.optimizer)
