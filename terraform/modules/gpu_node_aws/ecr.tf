################################################################################
# The serving image's repository (serving.runtime: container; issue #23)
#
# One repository per environment, <project>/<environment>/serving: the module is called once
# per environment root, each with its own state, and environments may live in other accounts
# (prod); a repository shared by two roots would be managed by both. The image's digest is the
# same in every environment's repository (the bytes are the same), so promotion moves one
# digest. `stacklock image push ENV` pushes into it (src/stacklock/adapters/ecr.py).
################################################################################

locals {
  ecr_repository_name = "${var.project}/${var.environment}/serving"
}

resource "aws_ecr_repository" "serving" {
  #checkov:skip=CKV_AWS_136:KMS is used when ecr_kms_key_arn names a key; the module has no KMS key of its own, and without one the images are encrypted with AES256 (ECR's own keys), the same protection at rest without a key policy every puller must be added to
  count = var.ecr_enabled ? 1 : 0

  name = local.ecr_repository_name
  # a tag never moves: the tag fp-<fingerprint> names one image for good, and the lock pins
  # its digest; a second push of another image under it is refused by ECR
  image_tag_mutability = "IMMUTABLE"
  force_delete         = false

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = var.ecr_kms_key_arn == null ? "AES256" : "KMS"
    kms_key         = var.ecr_kms_key_arn
  }

  tags = merge(local.tags, { "Name" = local.ecr_repository_name })
}

# Only untagged images expire. Every image stacklock pushes is tagged fp-<lock fingerprint>,
# and an immutable tag is never moved off it, so an image a lock (or a ledger revision, for a
# rollback) names is never expired; deleting one takes an explicit batch-delete-image.
resource "aws_ecr_lifecycle_policy" "serving" {
  count = var.ecr_enabled ? 1 : 0

  repository = aws_ecr_repository.serving[0].name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Expire untagged images (never one stacklock pushed: those carry an immutable fp- tag)"
      selection = {
        tagStatus   = "untagged"
        countType   = "sinceImagePushed"
        countUnit   = "days"
        countNumber = var.ecr_untagged_days
      }
      action = { type = "expire" }
    }]
  })
}

# The nodes pull by digest from this repository and no other. On the node, Docker's credential
# helper for ECR (docker-credential-ecr-login, set up by the serving_container role) calls
# GetAuthorizationToken with these instance-role credentials (IMDSv2) at each pull; dockerd then
# reads the manifest (BatchGetImage) and the layers (GetDownloadUrlForLayer). Nothing else.
data "aws_iam_policy_document" "ecr_pull" {
  count = var.ecr_enabled ? 1 : 0

  statement {
    sid     = "EcrLogin"
    actions = ["ecr:GetAuthorizationToken"]
    # GetAuthorizationToken has no resource-level permissions: AWS accepts only "*"
    resources = ["*"]
  }

  statement {
    sid       = "EcrPullServingImage"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = [aws_ecr_repository.serving[0].arn]
  }
}

resource "aws_iam_role_policy" "ecr_pull" {
  count = var.ecr_enabled ? 1 : 0

  name_prefix = "ecr-pull-"
  role        = aws_iam_role.this.id
  policy      = data.aws_iam_policy_document.ecr_pull[0].json
}
