# `helm test`: the release serves its first model. Inputs come from the environment (see the Pod spec).
set -eu
auth() {
  # The key travels in a header only when the restricted API is enabled; it is never echoed.
  if [ -n "${API_KEY:-}" ]; then curl "$@" -H "${API_HEADER}: ${API_KEY}"; else curl "$@"; fi
}
echo "waiting for ${TRITON_URL}/v2/health/ready"
auth -fsS -o /dev/null --retry 30 --retry-delay 2 --retry-all-errors --max-time 10 "${TRITON_URL}/v2/health/ready"
if [ -z "${MODEL}" ]; then
  echo "OK: server ready; no model configured to call (set models, model.name or test.model)"
  exit 0
fi
if [ -n "${MODEL_VERSION}" ]; then
  path="/v2/models/${MODEL}/versions/${MODEL_VERSION}/ready"
else
  path="/v2/models/${MODEL}/ready"
fi
echo "checking ${path}"
auth -fsS -o /dev/null --max-time 10 "${TRITON_URL}${path}"
if [ "${GENERATE:-false}" = "true" ]; then
  # A generative model: one short generation on the generate endpoint must return text.
  echo "generation on ${MODEL}"
  response="$(auth -fsS --max-time 120 -H 'Content-Type: application/json' -d "${REQUEST}" "${TRITON_URL}/v2/models/${MODEL}/generate")"
  echo "${response}"
  case "${response}" in
    *'"text_output":""'*) echo "FAIL: the generated text is empty" >&2; exit 1 ;;
    *'"text_output":"'*) ;;
    *) echo "FAIL: no text_output in the response" >&2; exit 1 ;;
  esac
  echo "OK: ${MODEL} generated"
  exit 0
fi
echo "inference on ${MODEL}"
response="$(auth -fsS --max-time 60 -H 'Content-Type: application/json' -d "${REQUEST}" "${TRITON_URL}/v2/models/${MODEL}/infer")"
echo "${response}"
# Every output must carry data: an empty "data":[] means the model ran but produced nothing.
case "${response}" in
  *'"outputs"'*) ;;
  *) echo "FAIL: no outputs in the response" >&2; exit 1 ;;
esac
case "${response}" in
  *'"data":[]'*) echo "FAIL: an output is empty" >&2; exit 1 ;;
esac
echo "OK: ${MODEL} answered"
