"""Ray Tune adapter: the trainable that trains one member array, the Searcher that asks the driver for
arrays, and the Tune settings. The one module that imports Ray.

A Tune trial is one member array: it reports every epoch with a checkpoint of the array, so a trial
whose worker or node dies resumes from its last epoch. Trials get only what they need (the data,
model and train sections and their members), never the whole spec or anything of the driver's
environment beyond an allow-list. The driver (study/driver.py) is reached through three hooks:
suggest(trial_id) -> trial config or None, on_epoch(trial_id, result), on_trial_end(trial_id, error).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

# Ray's C++ failure-signal handler, installed once Ray loads, dumps stacks and aborts on a SIGTERM (exit -6 or -11
# instead of the driver's clean interrupt, exit 130): off, before Ray is imported
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

import ray  # noqa: E402
from ray import tune
from ray.tune.search import Searcher

from .environment import seconds  # noqa: E402

CHECKPOINT_FILE = "array.pt"
# Tune copies these from the driver's environment into every trial's runtime_env (ray/tune/execution/
# class_cache.py), which Ray's runtime-env agent writes to its log in plain text; they are hidden from
# Tune while it runs (the driver needs them only before and after: spec and export artifacts)
TUNE_COPIED_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")
# what a trial's environment may carry from the driver's: fault-injection hooks of the tests and the
# settings of the libraries a trial uses; never credentials (they would land in Ray's logs)
TRIAL_ENV = ("STUDY_TEST_CRASH_AT_EPOCH", "STUDY_TEST_SLOW_EPOCH_S", "STUDY_TEST_FAIL_WHILE", "STUDY_CACHE", "OMP_NUM_THREADS",
             "CUDA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
             "ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA")  # the CPU kernels torch and oneDNN dispatch to


# --------------------------------------------------------------------------- the trainable (Ray worker)

def train_array(config: dict) -> None:
    """Train one array of members; report every epoch with a checkpoint; resume from one if Tune gives it."""
    import torch

    from .data import load_spec_data
    from .engine import ArrayConfig, ArrayTrainer, resolve_device
    from .environment import device_info
    from .spec import spec_from_dict

    failing = os.environ.get("STUDY_TEST_FAIL_WHILE")  # fault injection for tests: fail while this file exists
    if failing and Path(failing).exists():
        raise RuntimeError(f"test fault: {failing} exists")
    spec = spec_from_dict(config["spec"])  # the data, model and train sections, and this array's members
    members = list(spec.members)
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    device = resolve_device(spec.train.device)
    trainer = ArrayTrainer(members, load_spec_data(spec.data), ArrayConfig(spec.model, spec.train, spec.data), device)
    checkpoint = tune.get_checkpoint()
    resumed_from = None  # a retried trial (its worker or node died) continues from its last epoch
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            trainer.load_state_dict(torch.load(Path(path) / CHECKPOINT_FILE, weights_only=False))
        resumed_from = trainer.epoch
    node = ray.get_runtime_context().get_node_id()
    environment = json.dumps(device_info(device))   # what the members' rounding depends on
    crash_at = os.environ.get("STUDY_TEST_CRASH_AT_EPOCH")  # fault injection for tests: "epoch:marker-file"
    slow = float(os.environ.get("STUDY_TEST_SLOW_EPOCH_S", "0"))  # tests: time to inject a fault mid-trial

    def report(epoch: int, rows: list[dict]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(trainer.state_dict(), Path(tmp) / CHECKPOINT_FILE)
            # the resolved device settings, and the time of the first compiled step (0 when eager; each trial is a
            # process of its own, so a later trial of the same shapes finds inductor's code in its on-disk cache)
            settings = {**trainer.settings(), "compile_s": round(trainer.compile_s, 2)}
            tune.report({"epoch": epoch, "rows": json.dumps(rows), "node_id": node, "settings": json.dumps(settings),
                         "decay_counts": json.dumps(trainer.decay_counts), "environment": environment,
                         "resumed_from_epoch": -1 if resumed_from is None else resumed_from},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
        if slow:
            time.sleep(slow)
        if crash_at:
            at, marker = crash_at.split(":", 1)
            if epoch == int(at) and not Path(marker).exists():
                Path(marker).touch()
                os._exit(1)  # the worker process dies mid-trial, as a preempted node would

    if resumed_from is not None and trainer.epoch >= spec.train.epochs:
        report(trainer.epoch, [h[-1] for h in trainer.history])  # died after its last report: say so once more
    trainer.run(report)


# --------------------------------------------------------------------------- the driver's side

_LIVE: dict[int, object] = {}


class _Hooks:
    """The driver as Tune's searcher and callback see it. Tune pickles (and copies) both; every copy must
    keep calling this one live driver, whose connections and writer thread cannot be pickled."""

    def __init__(self, driver):
        self.driver = driver
        _LIVE[id(driver)] = driver

    def __reduce__(self):
        return _live_hooks, (id(self.driver),)


def _live_hooks(key: int) -> _Hooks:
    if key not in _LIVE:
        raise RuntimeError("the study driver can only be reached in the process that created it")
    return _Hooks(_LIVE[key])


class ArraySearcher(Searcher):
    """Tune's search algorithm: each suggestion is one array of members, asked of the driver."""

    def __init__(self, hooks: _Hooks):
        super().__init__(metric="epoch", mode="max")
        self.hooks = hooks

    def suggest(self, trial_id: str):
        config = self.hooks.driver.suggest(trial_id)
        return Searcher.FINISHED if config is None else config

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        if not error:  # a failed trial is closed by RecordCallback.on_trial_error, which comes next with the reason
            self.hooks.driver.on_trial_end(trial_id, None)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the stores are the searcher's state (see `study resume`)."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore; see save()."""


class RecordCallback(tune.Callback):
    """Every reported epoch of every array goes to the driver; a failed trial's reason too."""

    def __init__(self, hooks: _Hooks):
        self.hooks = hooks

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.hooks.driver.on_epoch(trial.trial_id, result)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.hooks.driver.on_retry(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.hooks.driver.on_trial_end(trial.trial_id, _error_line(trial))


class HaltStopper(tune.Stopper):
    """Stops every trial once the driver has halted (a store lost, an error in a hook): see driver._hook."""

    def __init__(self, hooks: _Hooks):
        self.hooks = hooks

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.hooks.driver.halted is not None


def _error_line(trial) -> str:
    """The last line of a failed trial's traceback (the exception), for the study's summary."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "the trial failed"


def _trial_name(trial) -> str:
    return f"{trial.config.get('arm', 'array')}-{trial.trial_id}"


def start_ray(address: str | None) -> None:
    """Join the cluster at `address`, or start a local Ray for this study (127.0.0.1, no dashboard)."""
    if ray.is_initialized():
        return
    logging.getLogger("ray.tune.tune").setLevel(logging.WARNING)  # "Wrote the latest version of all result files"
    # "Token authentication is enabled for this Ray cluster": the local cluster's own default, not something to act on
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    env = {k: os.environ[k] for k in TRIAL_ENV if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    on_sigterm = signal.getsignal(signal.SIGTERM)
    # ray.init was seen to hang for good in its core worker's registration (a 2-core machine under 4x load):
    # past STUDY_RAY_START_S the driver says so and ends (exit 1; its lease goes stale, `study resume` goes on)
    limit = seconds("STUDY_RAY_START_S")
    watchdog = threading.Timer(limit, _ray_start_hung, (limit, address))
    watchdog.daemon = True
    watchdog.start()
    try:
        if address:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env, logging_level=logging.WARNING)
        else:
            # "local": a Ray of the study's own, even where another Ray runs on this machine (a bare ray.init()
            # would join the latest `ray start`ed one, and die with it)
            ray.init(address="local", include_dashboard=False, log_to_driver=False, runtime_env=runtime_env,
                     logging_level=logging.WARNING)
    except SystemExit as e:  # ray.init's own SIGTERM handler exits: the driver's interrupt path instead
        if e.code == signal.SIGTERM:
            raise KeyboardInterrupt from None
        raise
    finally:
        watchdog.cancel()
        if callable(on_sigterm):  # Ray's handler (sys.exit) would skip the driver's records: keep the driver's
            signal.signal(signal.SIGTERM, on_sigterm)


def _ray_start_hung(limit: float, address: str | None) -> None:
    print(f"study: error: Ray did not {'join ' + address if address else 'start'} within {limit:g} s "
          f"(STUDY_RAY_START_S); what was recorded is kept: end stray Ray processes (`ray stop`) and go on with "
          f"`study resume`", file=sys.stderr, flush=True)
    node = getattr(ray._private.worker, "_global_node", None)  # a local Ray of this driver's: its processes go too
    if node is not None and not address:
        try:
            node.kill_all_processes(check_alive=False, allow_graceful=False)
        except Exception:  # ending anyway: the hang is the error said above
            pass
    os._exit(1)


def stop_ray() -> None:
    """Leave the cluster (and stop the local Ray this study started) at a known point, once the study's records
    are closed, instead of in the interpreter's exit handlers, where a driver was seen to crash (SIGSEGV) on a
    loaded machine after an interrupted study."""
    if ray.is_initialized():
        ray.shutdown()


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def autoscaler_running() -> bool:
    """Whether the cluster runs an autoscaler (its status is in Ray's GCS key-value store): then workers may
    start at zero, and a cluster with no GPU now gets GPU workers once the trials ask for them."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        return bool(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS))
    except Exception:   # no key-value store to ask: no autoscaler to rely on
        return False


def run_arrays(driver, name: str, storage_path: Path, arrays: int, cpus: float, gpus: float,
               max_concurrent: int | None, max_failures: int) -> None:
    """Train arrays until the driver's suggest() says there are none left (at most `arrays` trials)."""
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # no result files: by design
    hooks = _Hooks(driver)
    trainable = tune.with_resources(train_array, {"cpu": cpus, "gpu": gpus})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ArraySearcher(hooks), num_samples=arrays,
                                    max_concurrent_trials=max_concurrent,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage_path), callbacks=[RecordCallback(hooks)], verbose=0,
            stop=HaltStopper(hooks),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    hidden = {k: os.environ.pop(k) for k in TUNE_COPIED_SECRETS if k in os.environ}
    try:
        tuner.fit()
    finally:
        os.environ.update(hidden)
        _LIVE.pop(id(driver), None)
