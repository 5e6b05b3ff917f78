//go:build !race

package helm_test

const raceBuild = false
