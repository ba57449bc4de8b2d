// Command imagebuild writes a single-layer OCI image archive from files on
// disk, without a container daemon or a registry. The same inputs give the
// same bytes: entries are sorted, owned by root, and stamped with one time
// (SOURCE_DATE_EPOCH, or 0).
//
//	imagebuild --ref NAME:TAG --output image.tar --user 65532:65532 \
//	  --entrypoint /bin/app [--cmd ARG]... [--env K=V]... [--workdir DIR] \
//	  [--annotation K=V]... [--file SRC=DST[:MODE]]... [--dir DST[:MODE]]...
//
// The archive is an OCI image layout (oci-layout, index.json, blobs/) in a
// tar, which `ctr images import` and `skopeo copy oci-archive:` read. The
// manifest digest is printed on stdout.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

type entry struct {
	src  string // empty for a directory
	mode int64
}

func main() {
	var files, dirs, envs, annotations, entrypoint, cmd list
	ref := flag.String("ref", "", "image reference, e.g. bizosaas/bizosaas-agent:0.1.0")
	output := flag.String("output", "", "archive to write")
	user := flag.String("user", "65532:65532", "user[:group] the image runs as")
	workdir := flag.String("workdir", "/", "working directory")
	flag.Var(&files, "file", "SRC=DST[:MODE] a file to copy into the image")
	flag.Var(&dirs, "dir", "DST[:MODE] an empty directory")
	flag.Var(&envs, "env", "K=V environment")
	flag.Var(&annotations, "annotation", "K=V manifest annotation (also an image label)")
	flag.Var(&entrypoint, "entrypoint", "entrypoint argument (repeat)")
	flag.Var(&cmd, "cmd", "default argument (repeat)")
	flag.Parse()
	if *ref == "" || *output == "" || len(entrypoint) == 0 {
		die("--ref, --output and --entrypoint are required")
	}
	reference, err := name.ParseReference(*ref)
	check(err)
	stamp := time.Unix(0, 0).UTC()
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		secs, err := strconv.ParseInt(epoch, 10, 64)
		check(err)
		stamp = time.Unix(secs, 0).UTC()
	}

	entries := map[string]entry{}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok {
			die("--file wants SRC=DST[:MODE], got " + f)
		}
		dst, mode := splitMode(dst, -1)
		if mode < 0 {
			info, err := os.Stat(src)
			check(err)
			mode = int64(info.Mode().Perm())
		}
		entries[clean(dst)] = entry{src: src, mode: mode}
	}
	for _, d := range dirs {
		dst, mode := splitMode(d, 0o755)
		entries[clean(dst)] = entry{mode: mode}
	}
	layerBytes := layerTar(entries, stamp)
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithMediaType(types.OCILayer))
	check(err)

	labels := map[string]string{}
	for _, a := range annotations {
		k, v, _ := strings.Cut(a, "=")
		labels[k] = v
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: stamp}, CreatedBy: "imagebuild"}})
	check(err)
	cfg, err := img.ConfigFile()
	check(err)
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Created = v1.Time{Time: stamp}
	cfg.Config.User = *user
	cfg.Config.WorkingDir = *workdir
	cfg.Config.Entrypoint = entrypoint
	cfg.Config.Cmd = cmd
	cfg.Config.Env = envs
	cfg.Config.Labels = labels
	img, err = mutate.ConfigFile(img, cfg)
	check(err)
	img = mutate.Annotations(img, labels).(v1.Image)

	dir, err := os.MkdirTemp("", "imagebuild-")
	check(err)
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	check(err)
	// Docker Hub names are spelled docker.io/..., as containerd and kubelet spell them.
	full := strings.Replace(reference.Name(), name.DefaultRegistry+"/", "docker.io/", 1)
	check(lp.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": full,
		"io.containerd.image.name":          full,
	})))
	check(writeArchive(dir, *output, stamp))
	digest, err := img.Digest()
	check(err)
	fmt.Println(digest.String())
}

// layerTar builds the layer: every entry, with its parent directories, sorted.
func layerTar(entries map[string]entry, stamp time.Time) []byte {
	all := map[string]entry{}
	for p, e := range entries {
		all[p] = e
		for parent := path.Dir(p); parent != "." && parent != "/"; parent = path.Dir(parent) {
			if _, ok := all[parent]; !ok {
				all[parent] = entry{mode: 0o755}
			}
		}
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range names {
		e := all[p]
		hdr := &tar.Header{Name: p, Mode: e.mode, ModTime: stamp, Uid: 0, Gid: 0, Format: tar.FormatPAX}
		if e.src == "" {
			hdr.Typeflag, hdr.Name = tar.TypeDir, p+"/"
			check(tw.WriteHeader(hdr))
			continue
		}
		data, err := os.ReadFile(e.src)
		check(err)
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(data))
		check(tw.WriteHeader(hdr))
		_, err = tw.Write(data)
		check(err)
	}
	check(tw.Close())
	return buf.Bytes()
}

// writeArchive tars the layout directory with sorted names and fixed times.
func writeArchive(dir, output string, stamp time.Time) error {
	var names []string
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		names = append(names, rel)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	out, err := os.Create(output + ".tmp")
	if err != nil {
		return err
	}
	tw := tar.NewWriter(out)
	for _, rel := range names {
		info, err := os.Stat(filepath.Join(dir, rel))
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: stamp, Mode: 0o644, Format: tar.FormatPAX}
		if info.IsDir() {
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			return err
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(data))
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(output+".tmp", output)
}

func splitMode(s string, fallback int64) (string, int64) {
	if i := strings.LastIndex(s, ":"); i > 0 {
		if m, err := strconv.ParseInt(s[i+1:], 8, 64); err == nil {
			return s[:i], m
		}
	}
	return s, fallback
}

func clean(p string) string { return strings.TrimPrefix(path.Clean("/"+p), "/") }

func check(err error) {
	if err != nil {
		die(err.Error())
	}
}

func die(msg string) {
	fmt.Fprintln(os.Stderr, "imagebuild:", msg)
	os.Exit(1)
}
