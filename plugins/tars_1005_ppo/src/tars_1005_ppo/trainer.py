# tensorflow ships no type information: its imports are Any, the rest of this module stays strict
# mypy: disable-error-code="import-untyped"
"""The fixed PPO trainer (TARS-1005): memory that stays flat for as long as the trainer runs.

v1.0.0 grew by megabytes per iteration (see ``tars_1005_ppo.legacy_v100``). Each fix here answers one
cause, following the reference designs (CleanRL ``ppo.py``, Stable-Baselines3 ``RolloutBuffer``, tf-agents
PPO):

* the rollout lives in a :class:`RolloutBuffer` of NumPy arrays allocated once and overwritten every
  iteration, instead of Python lists of tensors that were never cleared;
* the policy, value and train steps are ``tf.function``s with fixed input signatures, and everything that
  changes between iterations (annealed learning rate and clip range) is a ``tf.Variable``, so each is
  traced once and :meth:`PPOTrainer.tracing_count` stays constant after the first iteration (a Python
  float argument made v1.0.0 retrace, and keep, a new graph every iteration);
* the models are called directly (``model(x, training=False)`` inside the compiled step), never
  ``model.predict`` in a loop, and are built once per trainer, not cloned per iteration;
* metrics are Python floats in bounded structures (a ``deque`` of the last 100 episode returns);
* ``keras.backend.clear_session()`` and ``gc.collect()`` run where models are (re)built, when a trainer
  is constructed, so a process that replaces its trainer (the service switching implementation, a soak
  resuming) does not accumulate Keras global state.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import attrs
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gymnasium as gym
import tensorflow as tf

from tars_1005_ppo.config import PPOConfig
from tars_core.state import atomic_write_text


def _configure_threads() -> None:
    """Limit TensorFlow's thread pools (the trainer shares small machines with other services).

    Must happen before the TF runtime starts; if the embedding program already started it, its choice
    stands.
    """
    try:
        tf.config.threading.set_inter_op_parallelism_threads(int(os.environ.get("TARS_TF_INTER_THREADS", "1")))
        tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("TARS_TF_INTRA_THREADS", "2")))
    except RuntimeError:
        pass


_configure_threads()


class ConfigError(ValueError):
    """A trainer configuration that cannot work (unknown env, continuous actions, empty buffer)."""


def make_envs(config: PPOConfig) -> gym.vector.VectorEnv:
    """The vectorised environment, refusing what this PPO cannot train before any model is built.

    ``SAME_STEP`` autoreset returns the first observation of the next episode in the step that ended the
    last one, with the final observation in ``info["final_obs"]`` so truncated episodes can be bootstrapped.
    """
    try:
        gym.spec(config.env_id)
    except gym.error.Error as exc:
        raise ConfigError(f"unknown gymnasium environment {config.env_id!r}: {exc}") from None
    envs = gym.make_vec(
        config.env_id,
        num_envs=config.num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    action_space = envs.single_action_space
    obs_space = envs.single_observation_space
    if not isinstance(action_space, gym.spaces.Discrete):
        envs.close()
        raise ConfigError(
            f"{config.env_id} has a {type(action_space).__name__} action space; PPOTrainer "
            "needs a discrete one (e.g. CartPole-v1, Acrobot-v1, LunarLander-v3)"
        )
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        envs.close()
        raise ConfigError(f"{config.env_id} has observations {obs_space}; PPOTrainer needs a flat Box")
    return envs


def build_mlp(inputs: int, outputs: int, hidden: tuple[int, ...], out_scale: float, name: str) -> Any:
    """An orthogonally initialised tanh MLP (the PPO implementation details CleanRL documents)."""
    layers: list[Any] = [tf.keras.Input((inputs,))]
    for width in hidden:
        layers.append(
            tf.keras.layers.Dense(
                int(width), activation="tanh", kernel_initializer=tf.keras.initializers.Orthogonal(np.sqrt(2))
            )
        )
    layers.append(tf.keras.layers.Dense(outputs, kernel_initializer=tf.keras.initializers.Orthogonal(out_scale)))
    return tf.keras.Sequential(layers, name=name)


class RolloutBuffer:
    """One rollout of ``n_steps`` x ``num_envs`` transitions, allocated once and overwritten each iteration.

    Its size never changes: :attr:`nbytes` is the same before the first iteration and after the millionth.
    """

    def __init__(self, n_steps: int, num_envs: int, obs_dim: int) -> None:
        if n_steps <= 0 or num_envs <= 0:
            raise ConfigError(f"rollout buffer needs n_steps > 0 and num_envs > 0, got {n_steps}x{num_envs}")
        shape = (n_steps, num_envs)
        self.obs = np.zeros((*shape, obs_dim), np.float32)
        self.actions = np.zeros(shape, np.int32)
        self.logprobs = np.zeros(shape, np.float32)
        self.rewards = np.zeros(shape, np.float32)
        self.ends = np.zeros(shape, np.float32)  # 1 where the episode ended after this step's action
        self.values = np.zeros(shape, np.float32)
        self.advantages = np.zeros(shape, np.float32)
        self.returns = np.zeros(shape, np.float32)
        self.n_steps = n_steps
        self.pos = 0

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self.obs,
            self.actions,
            self.logprobs,
            self.rewards,
            self.ends,
            self.values,
            self.advantages,
            self.returns,
        )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def reset(self) -> None:
        self.pos = 0

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        logprobs: np.ndarray,
        rewards: np.ndarray,
        ends: np.ndarray,
        values: np.ndarray,
    ) -> None:
        if self.pos >= self.n_steps:
            raise IndexError("rollout buffer is full: reset() it before the next rollout")
        p = self.pos
        self.obs[p], self.actions[p], self.logprobs[p] = obs, actions, logprobs
        self.rewards[p], self.ends[p], self.values[p] = rewards, ends, values
        self.pos += 1

    def compute_gae(self, last_values: np.ndarray, gamma: float, lam: float) -> None:
        """Advantages and returns (advantages + values) into the buffer's own arrays."""
        gae_into(self.advantages, self.rewards, self.ends, self.values, last_values, gamma, lam)
        np.add(self.advantages, self.values, out=self.returns)


def gae_into(
    advantages: np.ndarray,
    rewards: np.ndarray,
    ends: np.ndarray,
    values: np.ndarray,
    last_values: np.ndarray,
    gamma: float,
    lam: float,
) -> None:
    """Generalised advantage estimation (Schulman et al. 2016) over ``(n_steps, num_envs)`` arrays, written
    into ``advantages`` so a caller that owns a preallocated buffer allocates nothing per iteration."""
    last = np.zeros_like(last_values, dtype=np.float32)
    next_values = last_values.astype(np.float32)
    for t in reversed(range(len(rewards))):
        nonterminal = 1.0 - ends[t]
        delta = rewards[t] + gamma * next_values * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        advantages[t] = last
        next_values = values[t]


@attrs.frozen
class IterationStats:
    """What one iteration did, as plain floats (never tensors: a stored tensor keeps its buffers alive)."""

    iteration: int
    global_step: int
    seconds: float
    steps_per_s: float
    mean_return: float
    episodes: int
    loss: float
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    tracing_count: int


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


class _TrainerBase:
    """Models, optimiser, environment stepping, action sampling, the PPO update, episode bookkeeping and
    checkpoints shared by both trainers.

    Kept common so the benchmark compares the leak, not two different algorithms.
    """

    implementation = "base"

    def __init__(self, config: PPOConfig) -> None:
        self.config = config
        self.envs = make_envs(config)
        obs_space, action_space = self.envs.single_observation_space, self.envs.single_action_space
        assert isinstance(obs_space, gym.spaces.Box) and isinstance(action_space, gym.spaces.Discrete)
        self.obs_dim = int(obs_space.shape[0])
        self.n_actions = int(action_space.n)
        self.rng = np.random.default_rng(config.seed)
        tf.keras.utils.set_random_seed(config.seed)
        self.iteration = 0
        self.global_step = 0
        self.episode_returns: deque[float] = deque(maxlen=100)
        self.episodes = 0
        self._episode_acc = np.zeros(config.num_envs, np.float64)
        self._next_obs, _ = self.envs.reset(seed=config.seed)
        self._next_obs = self._next_obs.astype(np.float32)
        self.actor = build_mlp(self.obs_dim, self.n_actions, config.hidden, 0.01, "actor")
        self.critic = build_mlp(self.obs_dim, 1, config.hidden, 1.0, "critic")
        self.optimizer = tf.keras.optimizers.Adam(learning_rate=config.learning_rate, epsilon=1e-5)
        self.variables = [*self.actor.trainable_variables, *self.critic.trainable_variables]
        self.optimizer.build(self.variables)
        self._ckpt: tf.train.Checkpoint | None = None
        self._manager: tf.train.CheckpointManager | None = None

    # -- shared mechanics -------------------------------------------------------------------------
    def _anneal_fraction(self) -> float:
        if self.config.anneal_steps <= 0:
            return 1.0
        return max(self.config.anneal_floor, 1.0 - self.global_step / self.config.anneal_steps)

    def _sample(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Categorical sample by the Gumbel-max trick with the trainer's own seeded generator."""
        logp = _log_softmax(logits.astype(np.float64))
        gumbel = -np.log(-np.log(self.rng.uniform(1e-12, 1.0, size=logp.shape)))
        actions = np.argmax(logp + gumbel, axis=-1).astype(np.int32)
        return actions, np.take_along_axis(logp, actions[:, None], axis=-1)[:, 0].astype(np.float32)

    def _env_step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Step all envs; returns (next_obs, rewards, ends, cut) where ``cut`` holds, for episodes that a
        time limit truncated, their final observation (NaN rows elsewhere), or is None when none was cut."""
        obs, rewards, terminated, truncated, info = self.envs.step(actions)
        ends = np.logical_or(terminated, truncated)
        self._episode_acc += rewards
        for i in np.flatnonzero(ends):
            self.episode_returns.append(float(self._episode_acc[i]))
            self._episode_acc[i] = 0.0
            self.episodes += 1
        self.global_step += self.config.num_envs
        cut_mask = np.logical_and(truncated, ~terminated)
        cut = None
        if cut_mask.any() and "final_obs" in info:
            cut = np.full((self.config.num_envs, self.obs_dim), np.nan, np.float32)
            for i in np.flatnonzero(cut_mask):
                cut[i] = info["final_obs"][i]
        return obs.astype(np.float32), rewards.astype(np.float32), ends.astype(np.float32), cut

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.episode_returns)) if self.episode_returns else float("nan")

    def train(self, total_steps: int) -> list[IterationStats]:
        """Run iterations until ``total_steps`` more environment steps are done."""
        target = self.global_step + total_steps
        history: list[IterationStats] = []
        while self.global_step < target:
            history.append(self.train_iteration())
        return history

    def train_iteration(self) -> IterationStats:
        raise NotImplementedError

    def _ppo_update(
        self, obs: tf.Tensor, actions: tf.Tensor, old_logp: tf.Tensor, adv: tf.Tensor, returns: tf.Tensor, clip: Any
    ) -> tf.Tensor:
        """One clipped-surrogate gradient step on a minibatch; called inside each trainer's ``tf.function``.

        ``clip`` is what separates the trainers: a ``tf.Variable`` in the fixed one (traced once), a Python
        float in v1.0.0 (a new graph per value). Returns the six losses and diagnostics stacked.
        """
        cfg = self.config
        adv = (adv - tf.reduce_mean(adv)) / (tf.math.reduce_std(adv) + 1e-8)
        with tf.GradientTape() as tape:
            logp_all = tf.nn.log_softmax(self.actor(obs, training=True))
            logp = tf.gather(logp_all, actions, batch_dims=1)
            log_ratio = logp - old_logp
            ratio = tf.exp(log_ratio)
            clipped = tf.clip_by_value(ratio, 1.0 - clip, 1.0 + clip)
            policy_loss = -tf.reduce_mean(tf.minimum(ratio * adv, clipped * adv))
            entropy = -tf.reduce_mean(tf.reduce_sum(tf.exp(logp_all) * logp_all, axis=-1))
            values = tf.squeeze(self.critic(obs, training=True), -1)
            value_loss = 0.5 * tf.reduce_mean(tf.square(returns - values))
            loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss
        grads = tape.gradient(loss, self.variables)
        grads, _ = tf.clip_by_global_norm(grads, cfg.max_grad_norm)
        self.optimizer.apply_gradients(zip(grads, self.variables, strict=True))
        approx_kl = tf.reduce_mean((ratio - 1.0) - log_ratio)
        clip_fraction = tf.reduce_mean(tf.cast(tf.abs(ratio - 1.0) > clip, tf.float32))
        return tf.stack([loss, policy_loss, value_loss, entropy, approx_kl, clip_fraction])

    def _finish_iteration(self, started: float, totals: np.ndarray) -> IterationStats:
        """Count the iteration and describe it in plain floats (``totals``: the mean of the update outputs)."""
        self.iteration += 1
        seconds = time.perf_counter() - started
        return IterationStats(
            iteration=self.iteration,
            global_step=self.global_step,
            seconds=seconds,
            steps_per_s=self.config.batch_size / seconds if seconds > 0 else float("nan"),
            mean_return=self.mean_return,
            episodes=self.episodes,
            loss=float(totals[0]),
            policy_loss=float(totals[1]),
            value_loss=float(totals[2]),
            entropy=float(totals[3]),
            approx_kl=float(totals[4]),
            clip_fraction=float(totals[5]),
            tracing_count=self.tracing_count(),
        )

    def tracing_count(self) -> int:
        raise NotImplementedError

    def buffer_bytes(self) -> int:
        raise NotImplementedError

    def retained_items(self) -> int:
        """Objects the trainer keeps across iterations (rollout entries, metric records); flat when fixed."""
        raise NotImplementedError

    def policy_logits(self, obs: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.asarray(self.actor(tf.convert_to_tensor(obs, tf.float32), training=False))
        return out

    def _checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(actor=self.actor, critic=self.critic)

    def _checkpoint_obj(self) -> tf.train.Checkpoint:
        if self._ckpt is None:
            self._ckpt = self._checkpoint()
        return self._ckpt

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write a checkpoint (weights, optimizer state, counters, sampler state); returns its prefix.

        The environments are not saved: a restored trainer starts fresh episodes, as after a restart.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # One Checkpoint and manager per trainer and folder: a new Checkpoint object per save builds (and
        # keeps) new save machinery each time, which is itself a slow leak in a periodically saving soak.
        if self._manager is None or Path(self._manager.directory) != directory:
            self._manager = tf.train.CheckpointManager(self._checkpoint_obj(), str(directory), max_to_keep=2)
        prefix = self._manager.save(checkpoint_number=self.iteration)
        sidecar = {
            "checkpoint": Path(prefix).name,
            "implementation": self.implementation,
            "iteration": self.iteration,
            "global_step": self.global_step,
            "episodes": self.episodes,
            "episode_returns": list(self.episode_returns),
            "rng": self.rng.bit_generator.state,
            "config": attrs.asdict(self.config),
        }
        atomic_write_text(directory / "trainer_state.json", json.dumps(sidecar))
        return Path(prefix)

    def restore(self, directory: str | os.PathLike[str]) -> bool:
        """Load the latest checkpoint from ``directory``; False when there is none."""
        directory = Path(directory)
        state_file = directory / "trainer_state.json"
        if not state_file.exists():
            return False
        sidecar = json.loads(state_file.read_text())
        self._checkpoint_obj().restore(str(directory / sidecar["checkpoint"])).assert_existing_objects_matched()
        self.iteration = int(sidecar["iteration"])
        self.global_step = int(sidecar["global_step"])
        self.episodes = int(sidecar["episodes"])
        self.episode_returns = deque((float(r) for r in sidecar["episode_returns"]), maxlen=100)
        self.rng.bit_generator.state = sidecar["rng"]
        self._after_restore()
        return True

    def _after_restore(self) -> None:
        pass

    def close(self) -> None:
        self.envs.close()


class PPOTrainer(_TrainerBase):
    """Proximal Policy Optimisation with a clipped surrogate objective, GAE and minibatch epochs.

    Separate actor and critic MLPs share one Adam optimiser; the loss is CleanRL's
    ``policy_loss - ent_coef * entropy + vf_coef * value_loss`` with global gradient-norm clipping, and the
    learning rate and clip range anneal linearly over ``config.anneal_steps``.

    >>> trainer = PPOTrainer(PPOConfig(env_id="CartPole-v1"))
    >>> stats = trainer.train(20_000)            # doctest: +SKIP
    >>> trainer.save("ckpt"); trainer.restore("ckpt")  # doctest: +SKIP
    """

    implementation = "fixed"

    def __init__(self, config: PPOConfig | None = None) -> None:
        config = config or PPOConfig()
        # The place where models are (re)built: drop the Keras global state of any earlier trainer in this
        # process before creating new layers.
        tf.keras.backend.clear_session()
        gc.collect()
        super().__init__(config)
        self.buffer = RolloutBuffer(config.n_steps, config.num_envs, self.obs_dim)
        self.clip_range = tf.Variable(config.clip_range, trainable=False, dtype=tf.float32)
        obs_spec = tf.TensorSpec([None, self.obs_dim], tf.float32)
        vec = tf.TensorSpec([None], tf.float32)
        self._policy_step = tf.function(self._policy_step_impl, input_signature=[obs_spec])
        self._value_step = tf.function(self._value_step_impl, input_signature=[obs_spec])
        self._train_step = tf.function(
            self._train_step_impl, input_signature=[obs_spec, tf.TensorSpec([None], tf.int32), vec, vec, vec]
        )

    # -- compiled steps (traced once each) -------------------------------------------------------
    def _policy_step_impl(self, obs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self.actor(obs, training=False), tf.squeeze(self.critic(obs, training=False), -1)

    def _value_step_impl(self, obs: tf.Tensor) -> tf.Tensor:
        return tf.squeeze(self.critic(obs, training=False), -1)

    def _train_step_impl(
        self, obs: tf.Tensor, actions: tf.Tensor, old_logp: tf.Tensor, adv: tf.Tensor, returns: tf.Tensor
    ) -> tf.Tensor:
        return self._ppo_update(obs, actions, old_logp, adv, returns, self.clip_range)

    # -- public API ---------------------------------------------------------------------------------
    def tracing_count(self) -> int:
        return sum(
            int(f.experimental_get_tracing_count()) for f in (self._policy_step, self._value_step, self._train_step)
        )

    def buffer_bytes(self) -> int:
        return self.buffer.nbytes

    def retained_items(self) -> int:
        return len(self.episode_returns)

    def policy_logits(self, obs: np.ndarray) -> np.ndarray:
        logits, _ = self._policy_step(np.asarray(obs, np.float32))
        out: np.ndarray = logits.numpy()
        return out

    def train_iteration(self) -> IterationStats:
        cfg = self.config
        started = time.perf_counter()
        frac = self._anneal_fraction()
        self.optimizer.learning_rate = cfg.learning_rate * frac
        self.clip_range.assign(cfg.clip_range * frac)

        buf = self.buffer
        buf.reset()
        obs = self._next_obs
        for _ in range(cfg.n_steps):
            logits, values = self._policy_step(obs)
            actions, logp = self._sample(logits.numpy())
            next_obs, rewards, ends, cut = self._env_step(actions)
            if cut is not None:
                # A time-limit cut is not a failure: bootstrap the value of the state it cut off.
                boot = self._value_step(np.nan_to_num(cut)).numpy()
                rewards = rewards + cfg.gamma * np.where(np.isnan(cut[:, 0]), 0.0, boot).astype(np.float32)
            buf.add(obs, actions, logp, rewards, ends, values.numpy())
            obs = next_obs
        self._next_obs = obs
        buf.compute_gae(self._value_step(obs).numpy(), cfg.gamma, cfg.gae_lambda)

        flat_obs = buf.obs.reshape(-1, self.obs_dim)
        flat = [a.reshape(-1) for a in (buf.actions, buf.logprobs, buf.advantages, buf.returns)]
        n, mb = cfg.batch_size, cfg.minibatch_size
        totals = np.zeros(6, np.float64)
        updates = 0
        for _ in range(cfg.n_epochs):
            order = self.rng.permutation(n)
            for start in range(0, n - mb + 1, mb):
                idx = order[start : start + mb]
                totals += self._train_step(flat_obs[idx], *(a[idx] for a in flat)).numpy()
                updates += 1
        return self._finish_iteration(started, totals / max(updates, 1))

    def _checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(
            actor=self.actor, critic=self.critic, optimizer=self.optimizer, clip_range=self.clip_range
        )
