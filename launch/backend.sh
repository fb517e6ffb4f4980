# Sourced by the launch scripts: require_backend BACKEND HOW_TO_INSTALL
#
# Stops (returns 1) with a message when the python on PATH runs jax on another backend
# than BACKEND ("gpu", "tpu"), e.g. a CPU-only jax in a reused virtualenv, which would
# otherwise train on the CPU without a word. ALLOW_CPU=1 lets a CPU run go ahead.
require_backend() {
  local want="$1" install="$2" got
  got=$(python -c 'import jax; print(jax.default_backend())') || got=""
  got="${got##*$'\n'}"  # the last line: jax may print notices before it
  if [ "$got" = "$want" ]; then
    return 0
  fi
  if [ "$got" = cpu ] && [ "${ALLOW_CPU:-0}" = 1 ]; then
    echo "warning: jax has no $want here; training on the CPU (ALLOW_CPU=1)" >&2
    return 0
  fi
  echo "error: jax in $(command -v python) runs on '${got:-nothing: importing jax failed}'," \
       "not '$want'. Install jax with ${want^^} support into it: $install" \
       "(or set ALLOW_CPU=1 to train on the CPU anyway)" >&2
  return 1
}
