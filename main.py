"""ssv_jax main job: train then evaluate a recipe.

    python main.py --config=configs/simclr_am.py:demo --workdir=runs/demo
"""
import sys

if __name__ == "__main__":
    sys.exit("ssv_jax: training is not implemented yet (issue 5); the library so far holds the "
             "losses, metrics and sharding.")
