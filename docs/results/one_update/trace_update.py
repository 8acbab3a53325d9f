"""Trace one parameter-server update in the trainer of a local 2-worker a3c parameter-server run on CartPole: every
function of algorithms/ called while the server answers one push (the 30th), and the frames of this checkout on the
stack when the optimizer steps. Run from the root of any checkout (this one, or an old commit's worktree):

    PYTHONPATH=. .venv/bin/python docs/results/one_update/trace_update.py runs/trace_new
    (cd ../old && PYTHONPATH=. ../main/.venv/bin/python ../main/docs/results/one_update/trace_update.py runs/trace_old)
"""
import sys
from pathlib import Path

ROOT = Path.cwd().resolve()
sys.path.insert(0, str(ROOT))
stack = []
calls, state = [], {"pushes": 0, "depth": None, "done": False}

def profile(frame, event, arg):
    code = frame.f_code
    project = code.co_filename.startswith(str(ROOT)) and "/.venv/" not in code.co_filename
    if event == "call" and project and code.co_name == "push" and code.co_filename.endswith("parameter_server.py") \
            and state["depth"] is None and not state["done"]:
        state["pushes"] += 1
        if state["pushes"] == 30:
            state["depth"] = frame
    if state["depth"] is not None and event in ("call", "c_call"):
        if event == "call" and project:
            calls.append(f"{Path(code.co_filename).relative_to(ROOT)}:{code.co_name}")
        elif event == "c_call" and getattr(arg, "__name__", "") == "step":
            calls.append("torch:optimizer.step (C)")
    if event == "return" and frame is state["depth"]:
        state["depth"], state["done"] = None, True
    if state["depth"] is not None and event == "call" and code.co_name == "step" and "torch/optim" in code.co_filename \
            and not stack:
        f = frame
        while f is not None:
            if f.f_code.co_filename.startswith(str(ROOT)) and "/.venv/" not in f.f_code.co_filename:
                stack.append(f"{Path(f.f_code.co_filename).relative_to(ROOT)}:{f.f_code.co_name}")
            f = f.f_back

sys.setprofile(profile)
from experiments.train import main  # noqa: E402  (after the profiler: the trace counts the run's imports too)

out = sys.argv[1]
sys.argv = ["train", "algo=a3c", "algo.mode=parameter_server", "algo.num_workers=2", "total_env_steps=2000",
            f"hydra.run.dir={out}", "logger.wandb.mode=disabled", "quiet=true", "eval.episodes=0"]
try:
    main()
except SystemExit:
    pass
sys.setprofile(None)
calls = [c for c in calls if (c.startswith("algorithms/") or c.startswith("torch")) and not c.endswith(">")]
files = sorted({call.split(":")[0] for call in calls})
print(f"{len(calls)} calls in {len(files)} files: {', '.join(files)}")
print(f"stack at optimizer.step: {len(stack)} frames in {len({f.split(':')[0] for f in stack})} files")
for frame in reversed(stack):
    print("  ", frame)
