{{/* Names, labels, the per-region tars.yaml and the Job sizing of the tars-release chart. */}}

{{- define "tars-release.name" -}}
{{- .Chart.Name | trunc 30 | trimSuffix "-" -}}
{{- end -}}

{{- define "tars-release.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 30 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tars-release.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tars-release.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tars-release.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tars-release.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tars
{{- end -}}

{{- define "tars-release.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* "v1.0.1" -> "v1-0-1": release names go into object names */}}
{{- define "tars-release.releaseSlug" -}}
{{- .Values.release.name | lower | replace "." "-" | replace "_" "-" -}}
{{- end -}}

{{/* The Job of a region: <fullname>-<release>-<command>[-<runId>]-<region>, at most 63 characters */}}
{{- define "tars-release.jobName" -}}
{{- $root := index . 0 -}}
{{- $region := index . 1 -}}
{{- $parts := list (include "tars-release.fullname" $root) (include "tars-release.releaseSlug" $root) $root.Values.release.command -}}
{{- if $root.Values.release.runId -}}
{{- $parts = append $parts $root.Values.release.runId -}}
{{- end -}}
{{- $name := join "-" (append $parts $region.name) -}}
{{- if gt (len $name) 63 -}}
{{- fail (printf "Job name %s is longer than 63 characters: shorten the Helm release name, release.runId or the region name" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* The tars.yaml of one region (list root region): release section, ledger, the region's targets, plugin sections */}}
{{- define "tars-release.config" -}}
{{- $root := index . 0 -}}
{{- $region := index . 1 -}}
{{- $r := $root.Values.release -}}
{{- $release := dict "name" $r.name "rollback" $r.rollback "timeouts" $r.timeouts "plugin_timeouts" $r.pluginTimeouts "timeout_grace" $r.timeoutGrace "bake_time" $r.bakeTime "bake_times" $r.bakeTimes "reliability" $r.reliability "on_inconclusive" $r.onInconclusive -}}
{{- $plugins := mergeOverwrite (deepCopy $root.Values.plugins) (deepCopy (default dict $region.plugins)) -}}
{{- $config := dict "release" $release "state" (dict "url" $root.Values.ledger.url) "targets" $region.targets "plugins" $plugins -}}
# tars.yaml of region {{ $region.name }}, rendered by the tars-release chart. ${VAR} is read from the
# environment (the region's Secret); no secret is written here.
{{ toYaml $config }}
{{- end -}}

{{/* One phase timeout of one plugin (list values plugin phase), as tars_core.config.TarsConfig.timeout */}}
{{- define "tars-release.timeout" -}}
{{- $v := index . 0 -}}
{{- $plugin := index . 1 -}}
{{- $phase := index . 2 -}}
{{- $own := index (default dict $v.release.pluginTimeouts) $plugin -}}
{{- if kindIs "map" $own -}}
{{- if hasKey $own $phase -}}{{- index $own $phase -}}{{- else -}}{{- index $v.release.timeouts $phase -}}{{- end -}}
{{- else if not (kindIs "invalid" $own) -}}
{{- $own -}}
{{- else -}}
{{- index $v.release.timeouts $phase -}}
{{- end -}}
{{- end -}}

{{/*
Job sizing as JSON, the same formula as deploy/job_sizing.py (a test compares them on the rendered Jobs).
One attempt of apply, at worst: the preflight gate (max over plugins) + grace; per plugin apply, verify,
bake and rollback, each + grace; resolving a crashed earlier run first (max verify + rollback) + 2 grace.
A benchmark attempt: per plugin benchmark + grace. activeDeadlineSeconds = (backoffLimit + 1) x (attempt
+ start-up allowance) + the Job controller's back-off delays (10 s doubling, 6 min cap).
terminationGracePeriodSeconds: after SIGTERM tars-run stops the step in flight (grace) and rolls back
every plugin it applied (rollback + grace each), + 30 s to write the ledger and exit.
*/}}
{{- define "tars-release.sizing" -}}
{{- $v := .Values -}}
{{- $grace := float64 $v.release.timeoutGrace -}}
{{- $attempt := 0.0 -}}
{{- $preflight := 0.0 -}}
{{- $resolve := 0.0 -}}
{{- $term := addf $grace 30.0 -}}
{{- range $plugin := $v.release.plugins -}}
{{- $apply := float64 (include "tars-release.timeout" (list $v $plugin "apply")) -}}
{{- $verify := float64 (include "tars-release.timeout" (list $v $plugin "verify")) -}}
{{- $rollback := float64 (include "tars-release.timeout" (list $v $plugin "rollback")) -}}
{{- $bench := float64 (include "tars-release.timeout" (list $v $plugin "benchmark")) -}}
{{- $pre := float64 (include "tars-release.timeout" (list $v $plugin "preflight")) -}}
{{- $bake := float64 $v.release.bakeTime -}}
{{- if hasKey (default dict $v.release.bakeTimes) $plugin -}}
{{- $bake = float64 (index $v.release.bakeTimes $plugin) -}}
{{- end -}}
{{- if eq $v.release.command "benchmark" -}}
{{- $attempt = addf $attempt $bench $grace -}}
{{- else -}}
{{- $attempt = addf $attempt $apply $verify $bake $rollback (mulf 4.0 $grace) -}}
{{- $preflight = maxf $preflight $pre -}}
{{- $resolve = maxf $resolve (addf $verify $rollback) -}}
{{- end -}}
{{- $term = addf $term $rollback $grace -}}
{{- end -}}
{{- if ne $v.release.command "benchmark" -}}
{{- $attempt = addf $attempt $preflight $grace $resolve (mulf 2.0 $grace) -}}
{{- end -}}
{{- $backoff := 0.0 -}}
{{- $delay := 10.0 -}}
{{- range $i := until (int $v.job.backoffLimit) -}}
{{- $backoff = addf $backoff (minf $delay 360.0) -}}
{{- $delay = mulf $delay 2.0 -}}
{{- end -}}
{{- $startup := float64 $v.job.startupAllowanceSeconds -}}
{{- $deadline := addf (mulf (add1 (int $v.job.backoffLimit)) (addf $attempt $startup)) $backoff -}}
{{- if gt (float64 $v.job.activeDeadlineSeconds) 0.0 -}}
{{- $deadline = float64 $v.job.activeDeadlineSeconds -}}
{{- end -}}
{{- if gt (float64 $v.job.terminationGracePeriodSeconds) 0.0 -}}
{{- $term = float64 $v.job.terminationGracePeriodSeconds -}}
{{- end -}}
{{- dict "attempt" (ceil $attempt | int) "activeDeadlineSeconds" (ceil $deadline | int) "terminationGracePeriodSeconds" (ceil $term | int) | toJson -}}
{{- end -}}
