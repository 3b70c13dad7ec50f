package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

type config struct {
	rate, concurrency, rounds int
	duration, warmup          time.Duration
}

type result struct {
	p50, p99, max time.Duration
	paced         float64 // achieved rate
	errors        int64
	throughput    float64
	// cpuPerOp is the server process's CPU time per admission in the max
	// phase (from /proc; 0 where unavailable): robust to other load on
	// the machine, unlike the latencies.
	cpuPerOp time.Duration
}

func run(ctx context.Context, c config) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, self, "serve")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	var info struct {
		Addrs map[string]string
		Cert  string
	}
	if err := json.NewDecoder(bufio.NewReader(stdout)).Decode(&info); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(info.Cert))
	body, err := typicalReview()
	if err != nil {
		return err
	}
	fmt.Printf("# %s, %d CPUs (server: 1), GOMAXPROCS client %d, request %d bytes, rate %d/s, %v per phase, %d rounds\n",
		time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), runtime.GOMAXPROCS(0), len(body), c.rate, c.duration, c.rounds)
	names := []string{"baseline", "injector"}
	all := map[string][]result{}
	for r := 0; r < c.rounds; r++ {
		for _, name := range names {
			client := &http.Client{Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64,
			}, Timeout: 10 * time.Second}
			url := "https://" + info.Addrs[name] + "/mutate"
			if err := check(client, url, body, name); err != nil {
				return err
			}
			res := paced(ctx, client, url, body, c)
			res.throughput, res.cpuPerOp = closed(ctx, client, url, body, c, cmd.Process.Pid)
			all[name] = append(all[name], res)
			fmt.Printf("round %d %-9s p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms  (paced %.0f/s, %d errors)  max %6.0f admissions/s, server CPU %5.0f µs/admission  (load %s)\n",
				r+1, name, ms(res.p50), ms(res.p99), ms(res.max), res.paced, res.errors, res.throughput, us(res.cpuPerOp), loadavg())
			client.CloseIdleConnections()
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	fmt.Println("\nmedians over rounds:")
	fmt.Printf("%-9s %10s %10s %10s %14s %18s %22s\n", "server", "p50 ms", "p99 ms", "max ms", "admissions/s", "CPU µs/admission", "admissions/s per core")
	med := map[string]result{}
	for _, name := range names {
		rs := all[name]
		m := result{
			p50:        medianD(rs, func(r result) time.Duration { return r.p50 }),
			p99:        medianD(rs, func(r result) time.Duration { return r.p99 }),
			max:        medianD(rs, func(r result) time.Duration { return r.max }),
			throughput: medianF(rs, func(r result) float64 { return r.throughput }),
			cpuPerOp:   medianD(rs, func(r result) time.Duration { return r.cpuPerOp }),
		}
		med[name] = m
		perCore := 0.0
		if m.cpuPerOp > 0 {
			perCore = float64(time.Second) / float64(m.cpuPerOp)
		}
		fmt.Printf("%-9s %10.3f %10.3f %10.3f %14.0f %18.0f %22.0f\n", name, ms(m.p50), ms(m.p99), ms(m.max), m.throughput, us(m.cpuPerOp), perCore)
	}
	fmt.Printf("injector/baseline: p99 %.2fx, throughput %.2f\n", ms(med["injector"].p99)/ms(med["baseline"].p99), med["injector"].throughput/med["baseline"].throughput)
	return nil
}

// check makes sure the server answers 200 with an AdmissionReview (and
// the injector a patch) before measuring it.
func check(client *http.Client, url string, body []byte, name string) error {
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var rv admissionv1.AdmissionReview
	if resp.StatusCode != 200 || json.Unmarshal(out, &rv) != nil || rv.Response == nil || !rv.Response.Allowed {
		return fmt.Errorf("%s: HTTP %d %.200s", name, resp.StatusCode, out)
	}
	if name == "injector" && len(rv.Response.Patch) == 0 {
		return fmt.Errorf("injector answered without a patch")
	}
	return nil
}

func post(client *http.Client, url string, body []byte) error {
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// paced sends at c.rate per second (open loop) and measures each latency
// from its scheduled start.
func paced(ctx context.Context, client *http.Client, url string, body []byte, c config) result {
	interval := time.Second / time.Duration(c.rate)
	var mu sync.Mutex
	var lat []time.Duration
	var errs atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	measureFrom := start.Add(c.warmup)
	end := measureFrom.Add(c.duration)
	n := 0
	for next := start; next.Before(end) && ctx.Err() == nil; next = start.Add(time.Duration(n) * interval) {
		time.Sleep(time.Until(next))
		n++
		wg.Add(1)
		go func(sched time.Time) {
			defer wg.Done()
			err := post(client, url, body)
			d := time.Since(sched)
			if sched.Before(measureFrom) {
				return
			}
			if err != nil {
				errs.Add(1)
				return
			}
			mu.Lock()
			lat = append(lat, d)
			mu.Unlock()
		}(next)
	}
	wg.Wait()
	slices.Sort(lat)
	if len(lat) == 0 {
		return result{errors: errs.Load()}
	}
	return result{
		p50: lat[len(lat)*50/100], p99: lat[len(lat)*99/100], max: lat[len(lat)-1],
		paced: float64(len(lat)) / c.duration.Seconds(), errors: errs.Load(),
	}
}

// closed runs c.concurrency clients back to back and returns admissions/s
// and the server's CPU time per admission.
func closed(ctx context.Context, client *http.Client, url string, body []byte, c config, pid int) (float64, time.Duration) {
	var done atomic.Int64
	var measuring atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < c.concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if post(client, url, body) == nil && measuring.Load() {
					done.Add(1)
				}
			}
		}()
	}
	time.Sleep(c.warmup)
	measuring.Store(true)
	t0, cpu0 := time.Now(), cpuTime(pid)
	select {
	case <-time.After(c.duration):
	case <-ctx.Done():
	}
	n := done.Load()
	el, cpu := time.Since(t0), cpuTime(pid)-cpu0
	close(stop)
	wg.Wait()
	if n == 0 || cpu0 == 0 {
		return float64(n) / el.Seconds(), 0
	}
	return float64(n) / el.Seconds(), cpu / time.Duration(n)
}

// cpuTime is the user+system CPU time of process pid (Linux /proc; 0
// elsewhere).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:1], "")
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func medianD(rs []result, f func(result) time.Duration) time.Duration {
	v := make([]time.Duration, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func medianF(rs []result, f func(result) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

// typicalReview is the AdmissionReview of a typical pod.
func typicalReview() ([]byte, error) {
	svc := "ready"
	pod := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-7d9f8c6b5-", Namespace: "shop",
			Labels:      map[string]string{"app": "web", "pod-template-hash": "7d9f8c6b5", "version": "v1"},
			Annotations: map[string]string{"tether.dev/exclude-outbound-ports": "5432", "prometheus.io/scrape": "true"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			Volumes:            []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "web"}}}}},
			Containers: []corev1.Container{
				{Name: "web", Image: "example.com/web:1.2.3", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
					Env:            []corev1.EnvVar{{Name: "MODE", Value: "prod"}, {Name: "DB", Value: "postgres://db:5432/web"}},
					VolumeMounts:   []corev1.VolumeMount{{Name: "config", MountPath: "/etc/web"}},
					LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}, PeriodSeconds: 10},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}}},
					Resources:      corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: mustQ("250m"), corev1.ResourceMemory: mustQ("256Mi")}}},
				{Name: "grpc", Image: "example.com/grpc:1.2.3", Ports: []corev1.ContainerPort{{Name: "grpc", ContainerPort: 9090}},
					StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090, Service: &svc}}, FailureThreshold: 30}},
			},
		},
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	return json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: "00000000-0000-4000-8000-000000000000", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: "shop",
			Operation: admissionv1.Create, Object: kruntime.RawExtension{Raw: raw},
		},
	})
}

func mustQ(s string) resource.Quantity { return resource.MustParse(s) }
