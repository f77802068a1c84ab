# Shared by the benchmark scripts (source it after setting `root` to the repository root):
# the Python that has the setup's torch/torchvision, and the statistics helpers.
if [ -d "$root/.pydeps" ]; then export PYTHONPATH="$root/.pydeps${PYTHONPATH:+:$PYTHONPATH}"; fi
python="${PYTHON:-python3}"

# Median / "min-max" of the whitespace-separated numbers on stdin or in $1.
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
range() { echo "$1" | tr ' ' '\n' | grep . | sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%s-%s", lo, hi}'; }
