"""FrameReplayBuffer: rebuilt stacks equal full stacks (synthetic and real Atari data), coupled eviction, snapshots.

Every check compares against a ReplayBuffer that stores the same transitions as full stacks: both get the
same inserts in the same order, so a transition has the same id and slot in both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actor.nstep import NStepBuilder, true_next_obs
from common.envs import EnvSpec
from common.frame_dedup import dedup_stacks
from replay import snapshot
from replay.buffer import FieldSpec, ReplayBuffer
from replay.frame_storage import FRAMES, NEXT_OBS_FRAMES, OBS_FRAMES, FrameReplayBuffer
from replay.server import transition_fields

STACK = 4
N_STEP = 3


def fields(frame_shape: tuple[int, ...]) -> dict[str, FieldSpec]:
    """The replay server's own columns, for stacks of STACK frames."""
    return transition_fields(EnvSpec((STACK, *frame_shape), np.dtype(np.uint8), 4))


SMALL = (6, 8)
FIELDS = fields(SMALL)


# ---- data: n-step transitions of frame-stacked envs, batched into messages ------------------------
class FakeStackedEnvs:
    """E envs with frame-stacked observations and random episode ends, stepped like a SAME_STEP vector env.

    New frames are random, except that a screen sometimes does not change (a repeated frame), and a reset
    repeats the first frame K times, as FrameStackObservation's padding does.
    """

    def __init__(self, num_envs: int, seed: int, end_prob: float = 0.08) -> None:
        self.rng = np.random.default_rng(seed)
        self.end_prob = end_prob
        self.stacks = np.stack([self._reset() for _ in range(num_envs)])

    def _frame(self) -> np.ndarray:
        return self.rng.integers(0, 256, size=SMALL, dtype=np.uint8)

    def _reset(self) -> np.ndarray:
        return np.repeat(self._frame()[None], STACK, axis=0)

    def step(self) -> tuple[np.ndarray, ...]:
        num_envs = len(self.stacks)
        obs = self.stacks.copy()
        frames = [s[-1] if self.rng.random() < 0.1 else self._frame() for s in self.stacks]
        final = np.concatenate([self.stacks[:, 1:], np.stack(frames)[:, None]], axis=1)
        ends = self.rng.random(num_envs) < self.end_prob
        terminated = ends & (self.rng.random(num_envs) < 0.5)
        truncated = ends & ~terminated
        self.stacks = np.stack([self._reset() if e else f for e, f in zip(ends, final, strict=True)])
        actions = self.rng.integers(0, 4, num_envs)
        rewards = self.rng.standard_normal(num_envs)
        return obs, actions, rewards, terminated, truncated, final


@dataclass
class Message:
    """One actor message in both encodings: full stacks for the reference buffer, frames + indices for ours."""

    full: dict[str, np.ndarray]
    dedup: dict[str, np.ndarray]
    priorities: np.ndarray
    dedup_s: float  # time dedup_stacks took

    @property
    def frames(self) -> int:
        return len(self.dedup[FRAMES])

    def __len__(self) -> int:
        return len(self.full["action"])


def make_message(parts: list, rng: np.random.Generator) -> Message:
    full = {name: np.concatenate([getattr(t, name) for t in parts]) for name in FIELDS}
    start = time.perf_counter()
    frames, obs_frames, next_frames = dedup_stacks(full["obs"], full["next_obs"])
    seconds = time.perf_counter() - start
    small = {k: v for k, v in full.items() if k not in ("obs", "next_obs")}
    dedup = {**small, FRAMES: frames, OBS_FRAMES: obs_frames, NEXT_OBS_FRAMES: next_frames}
    return Message(full, dedup, rng.uniform(0.1, 5.0, len(full["action"])), seconds)


@dataclass
class FakeActor:
    seed: int
    num_envs: int = 2
    envs: FakeStackedEnvs = field(init=False)
    nstep: NStepBuilder = field(init=False)
    parts: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.envs = FakeStackedEnvs(self.num_envs, self.seed)
        self.nstep = NStepBuilder(self.num_envs, N_STEP, 0.99, (STACK, *SMALL), np.uint8)
        self.rng = np.random.default_rng(self.seed + 1000)

    def message(self, size: int) -> Message:
        count = sum(len(p) for p in self.parts)
        while count < size:
            out = self.nstep.add(*self.envs.step())
            if out is not None:
                self.parts.append(out)
                count += len(out)
        msg = make_message(self.parts, self.rng)
        self.parts = []
        return msg


def interleaved_messages(count: int, seed: int, max_size: int = 12) -> list[Message]:
    """Messages of random sizes from two actors, in the random order a replay server would receive them."""
    rng = np.random.default_rng(seed)
    actors = [FakeActor(seed * 10 + 1), FakeActor(seed * 10 + 2, num_envs=3)]
    return [actors[int(rng.integers(2))].message(int(rng.integers(1, max_size + 1))) for _ in range(count)]


# ---- the reference model and the checks -----------------------------------------------------------
@dataclass
class Reference:
    """Full-stack buffer fed the same inserts, plus what the coupled-eviction rule says must be stored.

    The rule: a transition may reference frames back to its message's start minus the reuse window, so
    it is dropped once the ring has overwritten that point (the frame counts are the buffer's own:
    which frames it could reuse is its business; that every stack still rebuilds is checked apart)."""

    naive: ReplayBuffer
    frame_capacity: int
    reuse_window: int
    message_start: list[int] = field(default_factory=list)  # per insert id: frames written before its message
    message_end: list[int] = field(default_factory=list)  # ... and after it
    written: int = 0
    sent_frames: int = 0

    def add(self, msg: Message, start: int, written: int) -> None:
        self.naive.add(msg.full, msg.priorities)
        self.message_start += [start] * len(msg)
        self.message_end += [written] * len(msg)
        self.written = written
        self.sent_frames += msg.frames

    def expected_bounds(self) -> tuple[int, int]:
        """Bounds on the oldest id still stored (all newer ones are). A transition's oldest frame lies
        between its message's start minus the reuse window and the message's end, so one whose whole
        message was overwritten must be gone, one whose start minus the window was not may stay; and
        at most `capacity` are stored."""
        total = len(self.message_start)
        starts = np.asarray(self.message_start, dtype=np.int64)
        threshold = self.written - self.frame_capacity
        floor = total - self.naive.capacity
        must_go = int(np.searchsorted(np.asarray(self.message_end, dtype=np.int64), threshold, side="right"))
        may_go = int(np.searchsorted(starts - self.reuse_window, threshold))
        return max(floor, must_go), max(floor, may_go)


def reference(buf: FrameReplayBuffer, capacity: int, prioritized: bool, seed: int) -> Reference:
    naive = ReplayBuffer(capacity, FIELDS, prioritized=prioritized, seed=seed)
    return Reference(naive, buf.frame_capacity, buf.reuse_window)


def add_both(buf: FrameReplayBuffer, ref: Reference, msg: Message) -> None:
    start = buf.frames_written
    buf.add(msg.dedup, msg.priorities)
    ref.add(msg, start, buf.frames_written)


def assert_consistent(buf: FrameReplayBuffer, ref: Reference) -> None:
    """Every stored transition rebuilds to its full stacks, and exactly the expected ids are stored."""
    ids = buf.ids
    stored = np.flatnonzero(ids >= 0)
    lowest, highest = ref.expected_bounds()
    kept = np.sort(ids[stored])
    total = len(ref.message_start)
    assert kept.size == 0 or np.array_equal(kept, np.arange(kept[0], total)), "not a newest-first suffix"
    assert lowest <= total - kept.size <= highest, (lowest, total - kept.size, highest)
    assert buf.size == len(stored) and buf.inserted_total == ref.naive.inserted_total
    np.testing.assert_array_equal(ref.naive.ids[stored], ids[stored])  # same id, same slot
    state = ref.naive.state_dict()
    obs, next_obs = buf.stacks(stored)
    np.testing.assert_array_equal(obs, state["data.obs"][stored])
    np.testing.assert_array_equal(next_obs, state["data.next_obs"][stored])
    if buf.prioritized:
        prios = buf.state_dict()["priorities"]
        assert np.all(prios[ids < 0] == 0.0)  # dropped slots can never be sampled
    if buf.size:
        assert buf.frames_in_use <= buf.frame_capacity


def assert_samples_match(buf: FrameReplayBuffer, ref: Reference, draws: int = 5) -> None:
    state = ref.naive.state_dict()
    for _ in range(draws):
        res = buf.sample(16, beta=0.5)
        assert list(res.data) == list(FIELDS)
        assert np.all(res.ids >= 0)
        np.testing.assert_array_equal(buf.ids[res.indices], res.ids)
        assert res.ids.min() >= ref.expected_bounds()[0]  # nothing that must be gone is sampled
        for name in FIELDS:
            np.testing.assert_array_equal(res.data[name], state["data." + name][res.indices], err_msg=name)
            assert res.data[name].dtype == FIELDS[name].dtype


def run(capacity: int, ratio: float, messages: list[Message], *, prioritized: bool = True, seed: int = 0):
    buf = FrameReplayBuffer(capacity, FIELDS, frames_per_transition=ratio, prioritized=prioritized, seed=seed)
    ref = reference(buf, capacity, prioritized, seed)
    for msg in messages:
        add_both(buf, ref, msg)
        assert_consistent(buf, ref)
    return buf, ref


# ---- synthetic data ------------------------------------------------------------------------------
def test_matches_full_stacks_through_many_wraps() -> None:
    messages = interleaved_messages(120, seed=1)
    buf, ref = run(40, 3.0, messages)
    assert ref.naive.inserted_total > 5 * 40 and ref.written > 3 * buf.frame_capacity  # both rings wrapped
    assert ref.written < 0.8 * ref.sent_frames  # frames repeated from an actor's previous message were reused
    assert buf.size == 40  # the frame budget never binds at 3 frames per transition
    # The same priorities and seed give the same draws as the full-stack buffer, data included.
    for _ in range(5):
        a, b = buf.sample(16, beta=0.5), ref.naive.sample(16, beta=0.5)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.weights, b.weights)
        for name in FIELDS:
            np.testing.assert_array_equal(a.data[name], b.data[name])


def test_reuse_index_clashes_and_hash_collisions_only_cost_storage(monkeypatch) -> None:
    """The reuse index proposes, the byte comparison decides: with every frame hashed alike (so each
    lookup finds the latest frame, almost never an equal one) or an index of two slots (so frames evict
    each other's entries), stacks still rebuild exactly; only fewer frames are reused."""
    messages = interleaved_messages(60, seed=5)
    _, normal = run(40, 3.0, messages)
    monkeypatch.setattr("replay.frame_storage.frame_hashes", lambda frames: np.zeros(len(frames), np.uint64))
    _, colliding = run(40, 3.0, messages)
    monkeypatch.undo()
    tiny = FrameReplayBuffer(40, FIELDS, frames_per_transition=3.0, seed=0)
    tiny._index_shift = np.uint64(63)
    tiny._index_hash, tiny._index_number = tiny._index_hash[:2].copy(), tiny._index_number[:2].copy()
    ref = reference(tiny, 40, True, 0)
    for msg in messages:
        add_both(tiny, ref, msg)
        assert_consistent(tiny, ref)
    assert normal.written < colliding.written <= normal.sent_frames
    assert normal.written < ref.written <= normal.sent_frames


@pytest.mark.parametrize("prioritized", [True, False])
def test_frame_budget_binding_evicts_oldest_first(prioritized: bool) -> None:
    messages = interleaved_messages(150, seed=2)
    buf, ref = run(60, 0.6, messages, prioritized=prioritized)
    assert 0 < buf.size < 60  # the frame ring, not the transition ring, decided what is stored
    assert buf.frames_in_use <= buf.frame_capacity
    assert_samples_match(buf, ref, draws=20)
    # A learner's late priority update for an early-evicted transition is stale, not applied.
    evicted_id = int(np.sort(buf.ids[buf.ids >= 0])[0]) - 1
    slot = evicted_id % 60
    assert buf.ids[slot] == -1
    before = buf.stale_priority_updates
    assert buf.update_priorities(np.array([slot]), np.array([evicted_id]), np.array([100.0])) == 0
    assert buf.stale_priority_updates == before + 1
    if prioritized:
        assert buf.state_dict()["priorities"][slot] == 0.0
    with pytest.raises(ValueError, match="empty"):
        buf.stacks(np.array([slot]))


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 30),
    ratio=st.sampled_from([0.4, 0.8, 1.0, 1.5, 3.0]),
    prioritized=st.booleans(),
    seed=st.integers(0, 10_000),
    count=st.integers(1, 25),
)
def test_any_message_sequence_matches_the_model(
    capacity: int, ratio: float, prioritized: bool, seed: int, count: int
) -> None:
    buf = FrameReplayBuffer(capacity, FIELDS, frames_per_transition=ratio, prioritized=prioritized, seed=seed)
    ref = reference(buf, capacity, prioritized, seed)
    for msg in interleaved_messages(count, seed, max_size=2 * capacity):
        if msg.frames > buf.frame_capacity:
            before = buf.state_dict()
            with pytest.raises(ValueError, match="cannot fit"):
                buf.add(msg.dedup, msg.priorities)
            assert_state_equal(before, buf.state_dict())
            continue
        add_both(buf, ref, msg)
        assert_consistent(buf, ref)
    if buf.size:
        assert_samples_match(buf, ref, draws=2)


# ---- validation ----------------------------------------------------------------------------------
def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
        assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k


def _bad_batches(good: dict[str, np.ndarray]) -> list[dict]:
    f = good[FRAMES]
    return [
        {k: v for k, v in good.items() if k != OBS_FRAMES},
        {**good, "obs": np.zeros((len(good["action"]), STACK, *SMALL), np.uint8)},
        {**good, OBS_FRAMES: good[OBS_FRAMES] + len(f)},  # index past the message's frames
        {**good, NEXT_OBS_FRAMES: good[NEXT_OBS_FRAMES] - len(f)},  # negative index
        {**good, OBS_FRAMES: good[OBS_FRAMES].astype(np.float64)},
        {**good, OBS_FRAMES: good[OBS_FRAMES] > 0},
        {**good, OBS_FRAMES: good[OBS_FRAMES][:, :2]},
        {**good, NEXT_OBS_FRAMES: good[NEXT_OBS_FRAMES][1:]},
        {**good, FRAMES: f.astype(np.int16)},
        {**good, FRAMES: f[:, :, :4]},
        {**good, "reward": good["reward"][1:]},
        {**good, "action": good["action"].astype(np.int32)},
    ]


def test_bad_messages_are_rejected_without_changes() -> None:
    messages = interleaved_messages(20, seed=3)
    buf, _ = run(30, 1.0, messages[:10])
    good = messages[10].dedup
    assert len(messages[10]) > 1
    before = buf.state_dict()
    for bad in _bad_batches(good):
        with pytest.raises(ValueError):
            buf.add(bad)
        if bad["action"].dtype == good["action"].dtype:  # small fields' dtypes are left to the inner buffer
            with pytest.raises(ValueError):
                buf.check_message(bad)  # so a decoding server can reject all of these early
        assert_state_equal(before, buf.state_dict())
    with pytest.raises(ValueError):
        buf.add(good, priorities=np.full(len(messages[10]), -1.0))
    assert_state_equal(before, buf.state_dict())
    assert len(buf.check_message(good)[1]) == len(messages[10])
    buf.add(good)  # and the good one still goes in


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frames_per_transition": 0.0},
        {"frames_per_transition": float("nan")},
        {"fields": {k: v for k, v in FIELDS.items() if k != "next_obs"}},
        {"fields": {**FIELDS, "next_obs": FieldSpec((STACK, 6, 9), np.dtype(np.uint8))}},
        {"fields": {**FIELDS, "obs": FieldSpec((STACK,), np.dtype(np.uint8))}},
        {"fields": {"obs": FIELDS["obs"], "next_obs": FIELDS["obs"]}},
        {"fields": {**FIELDS, "frames": FieldSpec((), np.dtype(np.int64))}},
        {"capacity": 0},
    ],
)
def test_constructor_validation(kwargs: dict) -> None:
    args = {"capacity": 8, "fields": FIELDS, **kwargs}
    with pytest.raises(ValueError):
        FrameReplayBuffer(args.pop("capacity"), args.pop("fields"), **args)


# ---- the inner buffer's early eviction -----------------------------------------------------------
def test_replay_buffer_evict_oldest() -> None:
    small = {"x": FieldSpec((), np.dtype(np.int64))}
    buf = ReplayBuffer(5, small, prioritized=False, seed=0)
    buf.add({"x": np.arange(7)})  # ids 2..6 stored, cursor at slot 2
    buf.evict_oldest(3)  # drops ids 2, 3, 4 (slots 2, 3, 4)
    np.testing.assert_array_equal(buf.ids, [5, 6, -1, -1, -1])
    assert buf.size == 2 and buf.cursor == 2 and buf.inserted_total == 7
    assert set(buf.sample(200, beta=0.0).ids.tolist()) == {5, 6}  # uniform draws only stored slots
    buf.add({"x": np.arange(2)})
    np.testing.assert_array_equal(buf.ids, [5, 6, 7, 8, -1])
    assert buf.size == 4
    for bad in (-1, 5, 1.0):
        with pytest.raises(ValueError):
            buf.evict_oldest(bad)  # type: ignore[arg-type]
    pri = ReplayBuffer(4, small, seed=0)
    pri.add({"x": np.arange(4)}, priorities=np.ones(4))
    pri.evict_oldest(4)
    assert pri.size == 0 and pri.state_dict()["priorities"].sum() == 0.0
    with pytest.raises(ValueError, match="empty"):
        pri.sample(1, beta=0.4)


# ---- snapshots -----------------------------------------------------------------------------------
def _busy(seed: int = 4) -> tuple[FrameReplayBuffer, list[Message]]:
    messages = interleaved_messages(60, seed=seed)
    buf, _ = run(40, 0.9, messages[:50], seed=seed)
    res = buf.sample(12, beta=0.4)
    buf.update_priorities(res.indices, res.ids, np.linspace(0.1, 9.0, 12))
    assert buf.size < 40  # early eviction is part of the state
    return buf, messages[50:]


def test_state_dict_round_trip_through_a_snapshot_file(tmp_path) -> None:
    buf, more = _busy()
    state = buf.state_dict()
    for v in state.values():
        assert isinstance(v, (np.ndarray, int, float))
    expected = [buf.sample(8, beta=0.6) for _ in range(4)]
    snapshot.write_snapshot(tmp_path, state)
    loaded, _ = snapshot.load_snapshot(tmp_path)
    fresh = FrameReplayBuffer(40, FIELDS, frames_per_transition=0.9, seed=123)
    fresh.load_state_dict(loaded)
    for want in expected:
        got = fresh.sample(8, beta=0.6)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.weights, want.weights)
        for name in FIELDS:
            np.testing.assert_array_equal(got.data[name], want.data[name])
    # Both continue identically, eviction included.
    for msg in more:
        np.testing.assert_array_equal(buf.add(msg.dedup, msg.priorities), fresh.add(msg.dedup, msg.priorities))
    assert_state_equal(buf.state_dict(), fresh.state_dict())


def test_load_state_dict_rejects_mismatches_without_changes() -> None:
    src, _ = _busy()
    state = src.state_dict()
    full = ReplayBuffer(40, FIELDS, seed=0)
    buf, _ = run(40, 0.9, interleaved_messages(5, seed=9))
    before = buf.state_dict()
    first = state["frames.first_frame"].copy()
    first[src.ids >= 0] = -(10**6)  # claims frames long overwritten
    slots = state["frames.obs_slots"].copy()
    slots[src.ids >= 0] = buf.frame_capacity
    bad_states = [
        full.state_dict(),  # a full-stack snapshot
        {**state, "frames.capacity": buf.frame_capacity + 1},
        {k: v for k, v in state.items() if k != "frames.ring"},
        {**state, "frames.ring": state["frames.ring"][:-1]},
        {**state, "frames.obs_slots": state["frames.obs_slots"].astype(np.int64)},
        {**state, "frames.first_frame": first},
        {**state, "frames.obs_slots": slots},
        {**state, "alpha": 0.3},  # the inner buffer's own checks still apply
    ]
    for bad in bad_states:
        with pytest.raises(ValueError):
            buf.load_state_dict(bad)
        assert_state_equal(before, buf.state_dict())
    with pytest.raises(ValueError):
        full.load_state_dict(state)  # and a frame-storage snapshot does not fit a full-stack buffer


# ---- real Atari episodes -------------------------------------------------------------------------
class AtariActor:
    """An actor's data path on a real ALE vector env: n-step transitions, batched into deduplicated messages."""

    def __init__(self, seed: int, *, life_loss: bool, max_episode_steps: int | None, send_size: int) -> None:
        gym = pytest.importorskip("gymnasium")
        ale_py = pytest.importorskip("ale_py")
        from gymnasium.vector import AutoresetMode
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        gym.register_envs(ale_py)
        kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
        self.env = gym.make_vec(
            "ALE/Breakout-v5",
            num_envs=2,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            wrappers=[
                lambda e: AtariPreprocessing(e, frame_skip=4, noop_max=30, terminal_on_life_loss=life_loss),
                lambda e: FrameStackObservation(e, STACK),
            ],
            frameskip=1,
            **kwargs,
        )
        self.obs, _ = self.env.reset(seed=seed)
        self.rng = np.random.default_rng(seed)
        self.nstep = NStepBuilder(2, N_STEP, 0.99, self.obs.shape[1:], self.obs.dtype)
        self.send_size = send_size
        self.parts: list = []
        self.terminations = self.truncations = 0
        self.step_s = 0.0

    def step(self) -> Message | None:
        start = time.perf_counter()
        actions = self.rng.integers(0, self.env.single_action_space.n, 2)
        next_obs, rewards, terminated, truncated, info = self.env.step(actions)
        self.step_s += time.perf_counter() - start
        self.terminations += int(terminated.sum())
        self.truncations += int((truncated & ~terminated).sum())
        out = self.nstep.add(
            self.obs, actions, rewards, terminated, truncated, true_next_obs(next_obs, terminated, truncated, info)
        )
        self.obs = next_obs
        if out is not None:
            self.parts.append(out)
        if sum(len(p) for p in self.parts) < self.send_size:
            return None
        msg = make_message(self.parts, self.rng)
        self.parts = []
        return msg


def test_real_atari_episodes_rebuild_exactly() -> None:
    actors = [
        AtariActor(1, life_loss=True, max_episode_steps=None, send_size=32),  # terminations at every lost life
        AtariActor(2, life_loss=False, max_episode_steps=480, send_size=32),  # truncations every 120 agent steps
    ]
    frame_fields = fields((84, 84))
    capacity = 400
    roomy = FrameReplayBuffer(capacity, frame_fields, frames_per_transition=2.0, seed=0)
    tight = FrameReplayBuffer(capacity, frame_fields, frames_per_transition=1.05, seed=0)
    naive = ReplayBuffer(capacity, frame_fields, seed=0)
    transitions = frames = 0
    dedup_s = 0.0
    for step in range(330):
        for actor in actors:  # messages from the two actors arrive interleaved
            msg = actor.step()
            if msg is None:
                continue
            for buf in (roomy, tight):
                buf.add(msg.dedup, msg.priorities)
            naive.add(msg.full, msg.priorities)
            transitions += len(msg)
            frames += msg.frames
            dedup_s += msg.dedup_s
            if step % 5 == 0 or step > 300:
                check_against_naive(roomy, naive, require_all=True)
                check_against_naive(tight, naive, require_all=False)
    check_against_naive(roomy, naive, require_all=True)
    check_against_naive(tight, naive, require_all=False)
    assert transitions > 2 * capacity and frames > 2 * tight.frame_capacity  # rings wrapped
    assert sum(a.terminations for a in actors) >= 3 and sum(a.truncations for a in actors) >= 3
    written_per_transition = roomy.frames_written / transitions
    assert written_per_transition < 1.1 < frames / transitions  # messages repeat frames; the ring does not
    assert tight.size >= 0.9 * capacity  # so a budget of 1.05 frames a transition holds nearly all of it
    res = roomy.sample(64, beta=0.4)
    want = naive.sample(64, beta=0.4)
    for name in frame_fields:
        np.testing.assert_array_equal(res.data[name], want.data[name])

    steps = sum(a.env.num_envs for a in actors) * 330
    step_us = sum(a.step_s for a in actors) / steps * 1e6
    dedup_us = dedup_s / transitions * 1e6
    print(
        f"\nreal Breakout, 2 actors x 2 envs, n={N_STEP}, K={STACK}, ~32 transitions per message: "
        f"{transitions} transitions, {frames / transitions:.3f} frames per transition sent, "
        f"{written_per_transition:.3f} written to the ring\n"
        f"dedup {dedup_us:.1f} us per transition vs env step {step_us:.0f} us\n"
        f"bytes per stored transition at capacity: full stacks {naive.nbytes / naive.size:.0f}, "
        f"frames (budget 2.0) {roomy.nbytes / roomy.size:.0f}, "
        f"frames (budget 1.05: {tight.size} of {capacity} fit) {tight.nbytes / tight.size:.0f}; "
        f"frames in use per stored transition {roomy.frames_in_use / roomy.size:.3f}"
    )


def check_against_naive(buf: FrameReplayBuffer, naive: ReplayBuffer, *, require_all: bool) -> None:
    """Every transition `buf` stores rebuilds to what `naive` stores for the same id in the same slot."""
    stored = np.flatnonzero(buf.ids >= 0)
    np.testing.assert_array_equal(buf.ids[stored], naive.ids[stored])
    if require_all:
        assert buf.size == naive.size
    assert buf.size == len(stored) > 0
    state = naive.state_dict()
    obs, next_obs = buf.stacks(stored)
    np.testing.assert_array_equal(obs, state["data.obs"][stored])
    np.testing.assert_array_equal(next_obs, state["data.next_obs"][stored])
