# Sourced by .ci/setup and .ci/gpu-wheels: `pip_quiet ARGS...` runs `$vpy -m pip ARGS...` quietly, dropping pip's
# warnings about find-links folders this machine's pip config names but does not have (noise, one per package);
# the rest of its stderr (errors, real warnings) is kept.
pip_quiet() {
  "$vpy" -m pip "$@" --disable-pip-version-check --quiet \
    2> >(grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" >&2)
}
