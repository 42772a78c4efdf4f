import json
from echorl.study.arms import FULL, get_arms
from echorl.study.runner import run_one

if __name__ == "__main__":
    res = run_one(get_arms(["grpo"])[0], 1, FULL, "outputs/ood_select/res", "outputs/ood_select/runs")
    print(json.dumps({k: res["final"][k] for k in ("test_avg", "ood_avg", "dev_avg")}), res["wall_s"], res["s_per_step"])
