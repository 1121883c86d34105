"""scripts/study.py's learning-rate grid rule (grow_grid) on made-up accuracy curves: the
grid ends with its best rate bracketed (a neighbour on both sides) whenever a bracket lies
within max_rates rates, grows downwards only max_points rates while nothing trains, and
stops at max_rates with the best at an edge only when the curve keeps rising past it.

usage: python3 tests/study_grid.py   (exit 0 when every case holds)
"""
import importlib.util
import os
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(root, "scripts"))  # study.py imports clitools from there
spec = importlib.util.spec_from_file_location("study", os.path.join(root, "scripts", "study.py"))
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)
S = study.STUDY
fails = []


def settle(curve):
    """The grid the driver ends with for accuracy curve(k) (0 = diverged)."""
    ks = list(S["grid"])
    while True:
        accs = {k: curve(k) for k in ks}
        k = study.grow_grid(ks, accs)
        if k is None:
            return ks, accs
        if k in ks or abs(k - ks[0]) != 1 and abs(k - ks[-1]) != 1:
            fails.append(f"grow_grid returned {k} for grid {ks}: not one step past an edge")
            return ks, accs
        ks = sorted(ks + [k])


def best_of(ks, accs):
    return max(ks, key=lambda k: (accs[k], -abs(k)))


def check(name, cond, detail):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else ": " + detail))
    if not cond:
        fails.append(name)


# a peak at k = p, diverging from k = d up: every peak the grid can reach gets bracketed
for p in range(-8, 4):
    for d in (p + 1, p + 3, 9):
        curve = lambda k, p=p, d=d: 0.0 if k >= d else 0.9 - 0.05 * abs(k - p)  # noqa: E731
        ks, accs = settle(curve)
        b = best_of(ks, accs)
        lowest = S["grid"][-1] - S["max_points"] + 1  # the downward search's last rate
        reachable = S["max_rates"] - len(S["grid"]) >= max(0, S["grid"][0] - p + 1,
                                                            p + 1 - S["grid"][-1])
        if d <= lowest:
            check(f"peak {p}, diverging from {d}: nothing trains in max_points rates",
                  ks == list(range(lowest, S["grid"][-1] + 1)), f"grid {ks}")
        elif reachable:
            check(f"peak {p}, diverging from {d}: bracketed", ks[0] < b < ks[-1] and b == p,
                  f"grid {ks}, best {b}")
        else:
            check(f"peak {p} out of reach: stops at {S['max_rates']} rates with the best at "
                  "the edge", len(ks) == S["max_rates"] and b in (ks[0], ks[-1]),
                  f"grid {ks}, best {b}")
        check(f"peak {p}, diverging from {d}: at most {S['max_rates']} rates",
              len(ks) <= S["max_rates"], f"grid {ks}")

# nothing trains at any rate: max_points rates, all downwards, then stop
ks, accs = settle(lambda k: 0.091)
check("nothing trains: grows downwards to max_points", ks == list(range(
    S["grid"][-1] - S["max_points"] + 1, S["grid"][-1] + 1)), f"grid {ks}")

# nothing trains above k = -3, then a peak at -5: found below the start (the MLP's
# b-kaiming at batch 8192 in the first study ended on the edge at 7 rates)
ks, accs = settle(lambda k: 0.0 if k >= -2 else 0.8 - 0.04 * abs(k + 5))
check("diverging grid, peak well below: bracketed", best_of(ks, accs) == -5 and ks[0] == -6,
      f"grid {ks}")

# ties go to the rate nearer the centre
ks, accs = settle(lambda k: 0.85 if k in (-1, 0) else 0.5)
check("tie: the rate nearer the centre, bracketed", best_of(ks, accs) == 0 and ks == S["grid"],
      f"grid {ks}")

check("max_rates >= max_points", S["max_rates"] >= S["max_points"], str(S))
sys.exit(1 if fails else 0)
