// The README's Uppy recipe ("From a browser"), as the browser test runs it. In an app, import
// from '@uppy/core' and '@uppy/xhr-upload' (or the `uppy` bundle) instead of passing them in.
//
// coffer answers every refusal with application/problem+json; Uppy's defaults show "This
// looks like a network error" for all of them and retry each 3 more times. This shows the
// problem's `detail` and retries only what can succeed later: a network failure (status 0),
// 429 and 5xx.

/** Whether a failed upload is worth another try. */
export function retriable(xhr) {
  return xhr.status === 0 || xhr.status === 429 || xhr.status >= 500;
}

/** coffer's problem `detail` for a failed answer (or its status when there is none). */
export function problemDetail(xhr) {
  try {
    const problem = JSON.parse(xhr.responseText);
    if (typeof problem.detail === 'string') return problem.detail;
  } catch {
    // Not a problem document (a proxy's own page, say).
  }
  return `upload failed (HTTP ${xhr.status})`;
}

/**
 * An Uppy that uploads to coffer with a bearer token from `getToken()`, or with only an
 * upload grant from `getGrant()` (minted by the app's backend with its API key: the page
 * never holds a user's token or the backend's key).
 */
export function cofferUppy({ Uppy, XHRUpload }, { api, getToken, getGrant, onAttempt = () => {} }) {
  return new Uppy().use(XHRUpload, {
    endpoint: `${api}/api/v1/files`,
    fieldName: 'file',
    headers: () => (getGrant ? { 'Upload-Grant': getGrant() } : { Authorization: `Bearer ${getToken()}` }),
    limit: 4,
    shouldRetry: retriable,
    onBeforeRequest: (xhr, retryCount) => onAttempt(retryCount),
    // Throwing here makes the problem's detail the error Uppy reports (uppy.on('upload-error'),
    // the Dashboard's message); shouldRetry still decides whether it is tried again.
    onAfterResponse: (xhr) => {
      if (xhr.status >= 400) throw new Error(problemDetail(xhr));
    },
  });
}

/**
 * coffer's problem `detail` behind an error of the Tus plugin (`uppy.on('upload-error',
 * (file, err) => show(tusProblemDetail(err)))`), or the error's own message when the server
 * gave none (a network failure).
 */
export function tusProblemDetail(err) {
  const body = err && err.originalResponse ? err.originalResponse.getBody() : null;
  try {
    const problem = JSON.parse(body);
    if (typeof problem.detail === 'string') return problem.detail;
  } catch {
    // Not a problem document.
  }
  return (err && err.message) || 'upload failed';
}

/**
 * An Uppy that uploads to coffer's resumable (tus) endpoint with a bearer token from
 * `getToken()`: large files go in `chunkSize` pieces, and a dropped connection or a restarted
 * server resumes from the bytes coffer holds. The finished file's id is the last segment of
 * `file.response.uploadURL`.
 */
export function cofferTusUppy({ Uppy, Tus }, { api, getToken, getGrant, chunkSize = 8 * 1024 * 1024 }) {
  return new Uppy().use(Tus, {
    endpoint: `${api}/api/v1/uploads`,
    // A grant (minted by the app's backend) or a user's token, as for the XHR recipe.
    headers: () => (getGrant ? { 'Upload-Grant': getGrant() } : { Authorization: `Bearer ${getToken()}` }),
    chunkSize,
    limit: 4,
    // Retry a network failure, 409 (an offset that moved: the client asks HEAD and resumes),
    // 423 (another PATCH still holds the upload), 429 and 5xx; never a refusal.
    retryDelays: [0, 1000, 3000, 5000],
    onShouldRetry: (err) => {
      const status = err.originalResponse ? err.originalResponse.getStatus() : 0;
      return status === 0 || status === 409 || status === 423 || status === 429 || status >= 500;
    },
    // Uppy's default fingerprint store would resume an upload of the same file by another user.
    storeFingerprintForResuming: false,
  });
}
