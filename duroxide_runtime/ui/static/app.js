// duroxide UI: actions and bulk progress. Served from the package (no build step, no CDN).
// Stored text is only ever set with textContent, never parsed as HTML.
"use strict";

(function () {
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function fieldsOf(form) {
    var fields = {};
    new FormData(form).forEach(function (value, key) {
      if (key !== "csrf_token" && key !== "action" && typeof value === "string") {
        fields[key] = value;
      }
    });
    return fields;
  }

  function post(url, fields) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrfToken()},
      body: JSON.stringify(fields)
    }).then(function (response) {
      return response.json().then(function (body) {
        return {ok: response.ok, status: response.status, body: body};
      }, function () {
        return {ok: false, status: response.status, body: {error: "HTTP_" + response.status, message: response.statusText}};
      });
    });
  }

  function problemText(body) {
    var text = (body.error || "ERROR") + ": " + (body.message || "");
    if (body.fix) { text += " Fix: " + body.fix; }
    return text;
  }

  function instanceUrl(id, params) {
    var url = new URL(window.location.href);
    var dotted = id.replace(/\./g, "") === "";
    url.pathname = "/instances/" + (dotted ? "id" : encodeURIComponent(id));
    url.search = "";
    if (dotted) { url.searchParams.set("id", id); }
    Object.keys(params || {}).forEach(function (k) { url.searchParams.set(k, params[k]); });
    return url.toString();
  }

  function setupActions() {
    var result = document.querySelector('[data-testid="action-result"]');
    document.querySelectorAll("form.action[data-action]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var action = form.getAttribute("data-action");
        var button = form.querySelector("button[type=submit]");
        if (action === "purge" && button.getAttribute("data-armed") !== "true") {
          button.setAttribute("data-armed", "true");
          button.textContent = "confirm purge";
          return;
        }
        button.disabled = true;
        result.hidden = false;
        result.className = "flash";
        result.setAttribute("data-state", "running");
        result.textContent = action + "...";
        post(form.getAttribute("action"), fieldsOf(form)).then(function (answer) {
          button.disabled = false;
          if (!answer.ok) {
            result.className = "flash error";
            result.setAttribute("data-state", "error");
            result.setAttribute("data-code", answer.body.error || "");
            result.textContent = problemText(answer.body);
            return;
          }
          result.setAttribute("data-state", "done");
          result.textContent = action + ": done.";
          var id = form.getAttribute("data-instance-id");
          if (action === "purge") {
            window.location.assign("/instances");
          } else {
            window.location.assign(instanceUrl(answer.body.new_instance_id || id, {done: action}));
          }
        }, function (error) {
          button.disabled = false;
          result.className = "flash error";
          result.setAttribute("data-state", "error");
          result.textContent = "request failed: " + error;
        });
      });
    });
  }

  // The schedules page: pause, resume, delete through the API (a plain form post carries
  // Origin: null under the page's no-referrer policy, which the UI refuses), then reload.
  function setupScheduleActions() {
    var result = document.querySelector('[data-testid="schedule-result"]');
    document.querySelectorAll("form.schedule-action").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var action = form.getAttribute("data-action");
        var button = form.querySelector("button[type=submit]");
        button.disabled = true;
        post(form.getAttribute("action"), fieldsOf(form)).then(function (answer) {
          button.disabled = false;
          if (!answer.ok) {
            result.hidden = false;
            result.className = "flash error";
            result.setAttribute("data-code", answer.body.error || "");
            result.textContent = problemText(answer.body);
            return;
          }
          window.location.assign("/schedules?done=" + encodeURIComponent(action));
        }, function (error) {
          button.disabled = false;
          result.hidden = false;
          result.className = "flash error";
          result.textContent = "request failed: " + error;
        });
      });
    });
  }

  function setupBulk() {
    var form = document.querySelector('[data-testid="bulk-form"]');
    if (!form) { return; }
    var box = form.querySelector('[data-testid="bulk-confirm-box"]');
    var text = form.querySelector('[data-testid="bulk-confirm-text"]');
    var progress = document.querySelector('[data-testid="bulk-progress"]');
    var bar = progress.querySelector('[data-testid="bulk-progress-bar"]');
    var count = progress.querySelector('[data-testid="bulk-progress-text"]');
    var state = progress.querySelector('[data-testid="bulk-status"]');
    var failures = progress.querySelector('[data-testid="bulk-failures"]');
    var reload = progress.querySelector('[data-testid="bulk-reload"]');

    function describeFilter(fields) {
      var parts = [];
      ["status", "name", "version", "q"].forEach(function (k) {
        if (fields[k]) { parts.push(k + "=" + fields[k]); }
      });
      return parts.length ? parts.join(", ") : "no filter: every instance";
    }

    form.querySelector('[data-testid="bulk-start"]').addEventListener("click", function () {
      var action = form.querySelector('[data-testid="bulk-action"]').value;
      text.textContent = action + " every instance matching (" + describeFilter(fieldsOf(form)) + ")?";
      box.hidden = false;
    });
    form.querySelector('[data-testid="bulk-cancel"]').addEventListener("click", function () {
      box.hidden = true;
    });

    function show(job) {
      var total = job.total === null ? 0 : job.total;
      bar.max = Math.max(total, 1);
      bar.value = job.done;
      count.textContent = job.done + " / " + (job.total === null ? "?" : job.total);
      count.setAttribute("data-done", String(job.done));
      count.setAttribute("data-total", job.total === null ? "" : String(job.total));
      while (failures.firstChild) { failures.removeChild(failures.firstChild); }
      Object.keys(job.failed || {}).forEach(function (id) {
        var li = document.createElement("li");
        li.setAttribute("data-testid", "bulk-failure");
        li.setAttribute("data-instance-id", id);
        li.textContent = id + ": " + job.failed[id];
        failures.appendChild(li);
      });
      if (job.finished) {
        reload.hidden = false;
        state.setAttribute("data-state", job.error ? "error" : "finished");
        state.textContent = job.error ? problemText(job.error) : "finished";
      }
    }

    function poll(jobId) {
      fetch("/api/bulk/" + encodeURIComponent(jobId), {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.json(); })
        .then(function (job) {
          show(job);
          if (!job.finished) { window.setTimeout(function () { poll(jobId); }, 250); }
        }, function (error) {
          state.setAttribute("data-state", "error");
          state.textContent = "lost the job: " + error;
        });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      box.hidden = true;
      var action = form.querySelector('[data-testid="bulk-action"]').value;
      progress.hidden = false;
      state.setAttribute("data-state", "running");
      state.textContent = "running";
      count.textContent = "starting...";
      post("/api/bulk/" + encodeURIComponent(action), fieldsOf(form)).then(function (answer) {
        if (!answer.ok) {
          state.setAttribute("data-state", "error");
          state.textContent = problemText(answer.body);
          return;
        }
        progress.setAttribute("data-job", answer.body.job);
        show(answer.body);
        poll(answer.body.job);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupActions();
    setupScheduleActions();
    setupBulk();
  });
})();
