#!/usr/bin/env bash
# Put the tests/ folder of the transformers release that is installed here (its PyPI sdist) into the cache that
# tests/models/test_transformers_common.py reads, so transformers' own common model battery runs against GenRec.
# Usage: tools/fetch_transformers_tests.sh [cache_root]   (default: ~/.cache/genrec_hf/transformers-tests)
# Needs only pip and PyPI. Idempotent: a cache already holding this version is kept.
set -euo pipefail
python=${PYTHON:-python}
version=$("$python" -c "import transformers; print(transformers.__version__)")
root=${1:-${GENREC_TRANSFORMERS_TESTS_CACHE:-$HOME/.cache/genrec_hf/transformers-tests}}
target="$root/$version"
if [ -f "$target/tests/test_modeling_common.py" ] && [ -f "$target/tests/test_configuration_common.py" ]; then
  echo "transformers $version tests already in $target/tests"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# --no-build-isolation + --no-deps: download the source archive only, never build or install anything.
"$python" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
  "transformers==$version" -d "$work" 2>/dev/null \
  || "$python" -m pip download --quiet --no-deps --no-binary :all: "transformers==$version" -d "$work"
archive=$(ls "$work"/transformers-"$version".tar.gz)
mkdir -p "$work/x"
tar -xzf "$archive" -C "$work/x" "transformers-$version/tests"
mkdir -p "$target"
rm -rf "$target/tests"
mv "$work/x/transformers-$version/tests" "$target/tests"
echo "transformers $version tests extracted to $target/tests ($(ls "$target/tests" | wc -l) files)"
