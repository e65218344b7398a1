// Package nginxtest runs the project's nginx site configurations for real
// in tests: it wraps a site file in a main configuration whose pid, logs
// and temporary paths all live in the test's directory, so nginx runs as
// the current user on loopback ports without touching the system's nginx.
package nginxtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Prepare writes site (the contents of a deploy/nginx/*.conf, with its
// paths and ports already substituted) into dir as siteName, wraps it in a
// main configuration, checks the result with `nginx -t`, and returns the
// arguments that start nginx on it (add "-g", "daemon off;").
func Prepare(t testing.TB, nginx, dir, siteName, site string) []string {
	t.Helper()
	sitePath := filepath.Join(dir, siteName)
	if err := os.WriteFile(sitePath, []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;\n" // workers would otherwise run as nobody, which cannot read the temp dir
	}
	main := user + `worker_processes 1;
pid ` + filepath.Join(dir, "nginx.pid") + `;
error_log ` + filepath.Join(dir, "error.log") + ` info;
events { worker_connections 64; }
http {
    client_body_temp_path ` + filepath.Join(dir, "client_body") + `;
    proxy_temp_path ` + filepath.Join(dir, "proxy") + `;
    fastcgi_temp_path ` + filepath.Join(dir, "fastcgi") + `;
    uwsgi_temp_path ` + filepath.Join(dir, "uwsgi") + `;
    scgi_temp_path ` + filepath.Join(dir, "scgi") + `;
    include ` + sitePath + `;
}
`
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-p", dir + "/", "-c", conf, "-e", filepath.Join(dir, "error.log")}
	if out, err := exec.Command(nginx, append(args, "-t")...).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t rejects %s: %v\n%s", siteName, err, out)
	}
	return args
}
