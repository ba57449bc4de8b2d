// Command runc-oom-clamp stands in for runc on the local node. It raises the
// oomScoreAdj that a container's OCI config asks for to this process's own
// value, then runs the real runc (named by $BIZOSAAS_REAL_RUNC) with the same
// arguments.
//
// Why: lowering oom_score_adj needs CAP_SYS_RESOURCE. Hosts that withhold it
// (some VMs and nested containers) make runc's init die whenever a container
// asks for less than the caller's value, which every pod sandbox does (-998)
// and so do Guaranteed pods (-997). Kubelet only uses the score to rank
// victims under memory pressure, so clamping it changes nothing else.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	real := os.Getenv("BIZOSAAS_REAL_RUNC")
	if real == "" {
		fail("BIZOSAAS_REAL_RUNC is not set; it must name the real runc binary")
	}
	if err := clamp(os.Args[1:]); err != nil {
		fail(err.Error())
	}
	if err := syscall.Exec(real, append([]string{real}, os.Args[1:]...), os.Environ()); err != nil {
		fail(fmt.Sprintf("exec %s: %v", real, err))
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "runc-oom-clamp:", msg)
	os.Exit(127)
}

// clamp rewrites the config that `create`/`run` (config.json in the bundle) or
// `exec --process FILE` will read.
func clamp(args []string) error {
	command, rest := subcommand(args)
	var path string
	switch command {
	case "create", "run":
		bundle := flagValue(rest, "bundle", "b")
		if bundle == "" {
			bundle = "."
		}
		path = filepath.Join(bundle, "config.json")
	case "exec":
		path = flagValue(rest, "process", "p")
	}
	if path == "" {
		return nil
	}
	own, err := ownScore()
	if err != nil {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.UseNumber()
	var doc map[string]any
	if err := decoder.Decode(&doc); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	process := doc
	if command != "exec" {
		p, ok := doc["process"].(map[string]any)
		if !ok {
			return nil
		}
		process = p
	}
	asked, ok := process["oomScoreAdj"].(json.Number)
	if !ok {
		return nil
	}
	value, err := asked.Int64()
	if err != nil || value >= own {
		return nil
	}
	process["oomScoreAdj"] = own
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o600)
}

// subcommand skips runc's global flags (all of the form --name[=value] or
// --name value) and returns the command and its arguments.
func subcommand(args []string) (string, []string) {
	valued := map[string]bool{"--root": true, "--log": true, "--log-format": true, "--criu": true, "--rootless": true}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if !strings.HasPrefix(arg, "-") {
			return arg, args[i+1:]
		}
		if valued[arg] {
			i++
		}
	}
	return "", nil
}

// flagValue finds --long VALUE, --long=VALUE, -short VALUE in args.
func flagValue(args []string, long, short string) string {
	for i, arg := range args {
		switch {
		case arg == "--"+long || arg == "-"+long || arg == "-"+short:
			if i+1 < len(args) {
				return args[i+1]
			}
		case strings.HasPrefix(arg, "--"+long+"="):
			return strings.TrimPrefix(arg, "--"+long+"=")
		}
	}
	return ""
}

func ownScore() (int64, error) {
	raw, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
}
