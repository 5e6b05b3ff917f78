package protocol

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	throughcarev1 "github.com/throughcare/throughcare/gen/throughcare/v1"
)

// contractFiles returns every file of package throughcare.v1 linked into the binary.
func contractFiles(t *testing.T) []protoreflect.FileDescriptor {
	t.Helper()
	var files []protoreflect.FileDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage("throughcare.v1", func(fd protoreflect.FileDescriptor) bool {
		files = append(files, fd)
		return true
	})
	// Referencing a generated type makes sure the package is linked in.
	if len(files) == 0 || throughcarev1.File_throughcare_v1_case_proto == nil {
		t.Fatal("no throughcare.v1 files registered")
	}
	return files
}

func TestEveryContractFieldIsMarked(t *testing.T) {
	files := contractFiles(t)
	if got := len(files); got < 8 {
		t.Fatalf("found %d contract files, want every file of proto/throughcare/v1", got)
	}
	for _, problem := range CheckMarkers(files...) {
		t.Error(problem)
	}
}

// TestCheckMarkersCatchesUnmarkedField proves the check above can fail: a contract that
// gains a personal-data field without a category is reported.
func TestCheckMarkersCatchesUnmarkedField(t *testing.T) {
	routing := &descriptorpb.FieldOptions{}
	proto.SetExtension(routing, throughcarev1.E_Routing, true)
	health := &descriptorpb.FieldOptions{}
	proto.SetExtension(health, throughcarev1.E_Category, throughcarev1.DataCategory_DATA_CATEGORY_HEALTH)
	both := &descriptorpb.FieldOptions{}
	proto.SetExtension(both, throughcarev1.E_Routing, true)
	proto.SetExtension(both, throughcarev1.E_Category, throughcarev1.DataCategory_DATA_CATEGORY_RISK)

	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	msg := descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum()
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	file := &descriptorpb.FileDescriptorProto{
		Name:       proto.String("throughcare/v1/synthetic_test.proto"),
		Package:    proto.String("throughcare.v1test"),
		Syntax:     proto.String("proto3"),
		Dependency: []string{"throughcare/v1/data.proto"},
		MessageType: []*descriptorpb.DescriptorProto{
			{
				Name: proto.String("Record"),
				Field: []*descriptorpb.FieldDescriptorProto{
					{Name: proto.String("id"), Number: proto.Int32(1), Type: str, Label: opt, Options: routing},
					{Name: proto.String("diagnosis"), Number: proto.Int32(2), Type: str, Label: opt},
					{Name: proto.String("ambiguous"), Number: proto.Int32(3), Type: str, Label: opt, Options: both},
					{Name: proto.String("details"), Number: proto.Int32(4), Type: msg, Label: opt, TypeName: proto.String(".throughcare.v1test.Details"), Options: routing},
					{Name: proto.String("clinic"), Number: proto.Int32(5), Type: msg, Label: opt, TypeName: proto.String(".throughcare.v1test.Clinic"), Options: health},
					// A routing map of strings: its entries take its marker.
					{Name: proto.String("labels"), Number: proto.Int32(6), Type: msg, Label: descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum(), TypeName: proto.String(".throughcare.v1test.Record.LabelsEntry"), Options: routing},
				},
				NestedType: []*descriptorpb.DescriptorProto{{
					Name:    proto.String("LabelsEntry"),
					Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
					Field: []*descriptorpb.FieldDescriptorProto{
						{Name: proto.String("key"), Number: proto.Int32(1), Type: str, Label: opt},
						{Name: proto.String("value"), Number: proto.Int32(2), Type: str, Label: opt},
					},
				}},
			},
			{
				Name:  proto.String("Details"),
				Field: []*descriptorpb.FieldDescriptorProto{{Name: proto.String("note"), Number: proto.Int32(1), Type: str, Label: opt}},
			},
			{
				Name:  proto.String("Clinic"),
				Field: []*descriptorpb.FieldDescriptorProto{{Name: proto.String("name"), Number: proto.Int32(1), Type: str, Label: opt, Options: routing}},
			},
		},
	}
	fd, err := protodesc.NewFile(file, protoregistry.GlobalFiles)
	if err != nil {
		t.Fatalf("build synthetic file: %v", err)
	}
	got := strings.Join(CheckMarkers(fd), "\n")
	for _, want := range []string{
		"throughcare.v1test.Record.diagnosis: carries neither",
		"throughcare.v1test.Record.ambiguous: carries both",
		"throughcare.v1test.Details.note: carries neither",
		"throughcare.v1test.Clinic.name: is inside categorized field throughcare.v1test.Record.clinic",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("CheckMarkers missed %q; got:\n%s", want, got)
		}
	}
	if strings.Contains(got, "Record.id") || strings.Contains(got, "LabelsEntry") {
		t.Errorf("CheckMarkers flagged a marked routing field; got:\n%s", got)
	}
}
